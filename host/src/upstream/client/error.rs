//! Why a request got no response, and the request handed back when none
//! of it was sent.

use http::Request;

use super::super::BoxError;
use super::UpstreamBody;

/// Why a request got no response.
#[derive(Debug)]
pub enum ClientError {
    /// No connection could be opened (refused, unreachable, timed out, or
    /// the TLS handshake failed).
    Connect(BoxError),
    /// The connection failed after the request went out, or the response
    /// was malformed.
    Http(hyper::Error),
    /// The request itself could not be sent as given.
    Request(String),
    /// The backend's response head has framing that could be read two
    /// ways; its connection was dropped.
    Framing(&'static str),
    /// The backend has `max_connections_per_backend` connections open and
    /// none came free within the connect timeout.
    Saturated,
}

impl ClientError {
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect(_))
    }

    /// Whether the exchange failed before any response byte: the
    /// connection could not be opened, or reset or closed before the
    /// response head (not: a malformed or ambiguous response, or a failure
    /// of the request's own body).
    pub fn before_response(&self) -> bool {
        match self {
            ClientError::Connect(_) | ClientError::Saturated => true,
            ClientError::Http(e) => !(e.is_parse() || e.is_user() || e.is_parse_status()),
            ClientError::Request(_) | ClientError::Framing(_) => false,
        }
    }
}

/// A request that got no response.
#[derive(Debug)]
pub struct Failed {
    pub error: ClientError,
    /// The request, when none of it reached the backend: no connection
    /// could be opened, or the connection closed before hyper wrote it. It
    /// may go to another backend whatever its method.
    /// Boxed: failures are rare, and the `Result` stays small.
    pub unsent: Option<Box<Request<UpstreamBody>>>,
}

impl Failed {
    /// A failure before any of `req` was written.
    pub(super) fn unsent(error: ClientError, req: Request<UpstreamBody>) -> Self {
        Failed {
            error,
            unsent: Some(Box::new(req)),
        }
    }
}

impl From<ClientError> for Failed {
    fn from(error: ClientError) -> Self {
        Failed {
            error,
            unsent: None,
        }
    }
}

/// The result of a send whose request hyper may hand back.
pub(super) fn handed_back<T>(
    r: Result<T, hyper::client::conn::TrySendError<Request<UpstreamBody>>>,
) -> Result<T, Failed> {
    r.map_err(|mut e| {
        let unsent = e.take_message().map(Box::new);
        Failed {
            error: ClientError::Http(e.into_error()),
            unsent,
        }
    })
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "cannot connect: {e}"),
            ClientError::Http(e) => e.fmt(f),
            ClientError::Request(why) => f.write_str(why),
            ClientError::Framing(why) => write!(f, "ambiguous response framing: {why}"),
            ClientError::Saturated => {
                f.write_str("max_connections_per_backend reached; no connection came free")
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect(e) => Some(&**e),
            // The hyper error is this error's own text; its cause (a body
            // error such as the size limit) is the source.
            ClientError::Http(e) => e.source(),
            ClientError::Request(_) | ClientError::Framing(_) | ClientError::Saturated => None,
        }
    }
}
