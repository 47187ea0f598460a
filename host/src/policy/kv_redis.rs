//! The `kv` import on Redis or Valkey (`[kv] backend = "redis"`), so that
//! every instance of a deployment shares each policy's keys: a rate limit
//! of 100/s is 100/s across them all.
//!
//! Keys live under `{key_prefix}{policy}:`, one prefix per policy
//! namespace. Each operation is one command or one server-side script, so
//! each is atomic per key as the WIT promises:
//! - get, set (`SET .. PX`), delete: one command;
//! - increment: a script (`INCRBY`, and the TTL set only when it created
//!   the key; a value that is not a counter counts as 0 and keeps its
//!   expiry, as in the memory store);
//! - compare-and-swap: a script (`GET`, compare, `SET`).
//!
//! Counters are decimal text in both stores, so `get` reads them alike.
//! Each operation has the `[kv] timeout_ms`; past it, or with Redis down,
//! the policy gets `unavailable`, never a hang. The `redis` crate's
//! `ConnectionManager` reconnects by itself; `pool_size` of them share the
//! load (each one multiplexes its commands on one connection).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, SetExpiry, SetOptions};

use super::kv::{KvError, check};
pub use crate::config::kv::RedisSettings;

/// A TTL this long or longer is "no expiry" (Redis refuses an expiry
/// past its clock's range; the memory store treats one that overflows
/// its clock so).
const NO_EXPIRY_FROM_MS: u64 = i64::MAX as u64 / 4;

const INCREMENT: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  local ok = redis.pcall('INCRBY', KEYS[1], ARGV[1])
  if type(ok) == 'table' and ok.err then
    redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
  end
  return redis.call('GET', KEYS[1])
end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return ARGV[1]
";

const COMPARE_AND_SWAP: &str = r"
local v = redis.call('GET', KEYS[1])
local matches
if ARGV[1] == '1' then matches = (v == ARGV[2]) else matches = (v == false) end
if not matches then return 0 end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
";

/// The connections to one Redis, shared by every namespace.
pub struct RedisKv {
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    timeout: Duration,
    prefix: String,
    increment: Script,
    compare_and_swap: Script,
}

impl RedisKv {
    /// Connections to `settings.url`, made lazily: the daemon starts (and
    /// serves, its policies seeing `unavailable`) while Redis is down.
    pub fn new(settings: &RedisSettings) -> Result<RedisKv, String> {
        let client =
            redis::Client::open(settings.url.as_str()).map_err(|e| format!("kv.url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connections = (0..settings.pool_size.max(1))
            .map(|_| client.get_connection_manager_lazy(config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("kv.url: {e}"))?;
        Ok(RedisKv {
            connections,
            next: AtomicUsize::new(0),
            timeout: settings.timeout,
            prefix: settings.key_prefix.clone(),
            increment: Script::new(INCREMENT),
            compare_and_swap: Script::new(COMPARE_AND_SWAP),
        })
    }

    /// The namespace of one policy.
    pub fn namespace(self: &Arc<Self>, policy: &str) -> RedisNamespace {
        RedisNamespace {
            prefix: format!("{}{policy}:", self.prefix),
            kv: self.clone(),
        }
    }

    fn connection(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[i].clone()
    }

    /// `op` on a connection, within the timeout.
    async fn run<T>(
        &self,
        op: impl AsyncFnOnce(ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, KvError> {
        match tokio::time::timeout(self.timeout, op(self.connection())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(KvError::Unavailable(format!("redis: {e}"))),
            Err(_) => Err(KvError::Unavailable(format!(
                "redis did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

/// One policy's keys on Redis.
#[derive(Clone)]
pub struct RedisNamespace {
    kv: Arc<RedisKv>,
    prefix: String,
}

/// The TTL argument of a script: empty for none.
fn ttl_arg(ttl_ms: Option<u64>) -> String {
    match ttl_ms {
        Some(ms) if ms < NO_EXPIRY_FROM_MS => ms.max(1).to_string(),
        _ => String::new(),
    }
}

impl RedisNamespace {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A key over the limit cannot have been stored: absent, as in the
    /// memory store, without a round trip.
    fn storable(key: &str) -> bool {
        check(key, &[]).is_ok()
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        if !Self::storable(key) {
            return Ok(None);
        }
        let k = self.key(key);
        self.kv
            .run(async move |mut c| redis::cmd("GET").arg(k).query_async(&mut c).await)
            .await
    }

    pub async fn set(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        check(key, &value)?;
        let k = self.key(key);
        let mut options = SetOptions::default();
        if let Some(ms) = ttl_ms.filter(|ms| *ms < NO_EXPIRY_FROM_MS) {
            options = options.with_expiration(SetExpiry::PX(ms.max(1)));
        }
        self.kv
            .run(async move |mut c| {
                redis::cmd("SET")
                    .arg(k)
                    .arg(value)
                    .arg(options)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        check(key, &new)?;
        let k = self.key(key);
        let (present, expected) = match expected {
            Some(e) => ("1", e.to_vec()),
            None => ("0", Vec::new()),
        };
        let ttl = ttl_arg(ttl_ms);
        let script = self.kv.compare_and_swap.clone();
        let stored: i64 = self
            .kv
            .run(async move |mut c| {
                script
                    .key(k)
                    .arg(present)
                    .arg(expected)
                    .arg(new)
                    .arg(ttl)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(stored == 1)
    }

    pub async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, KvError> {
        check(key, &[])?;
        let k = self.key(key);
        let ttl = ttl_arg(ttl_ms);
        let script = self.kv.increment.clone();
        let text: String = self
            .kv
            .run(async move |mut c| script.key(k).arg(delta).arg(ttl).invoke_async(&mut c).await)
            .await?;
        text.parse()
            .map_err(|_| KvError::Unavailable(format!("redis answered {text:?} to an increment")))
    }

    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        if !Self::storable(key) {
            return Ok(false);
        }
        let k = self.key(key);
        let n: i64 = self
            .kv
            .run(async move |mut c| redis::cmd("DEL").arg(k).query_async(&mut c).await)
            .await?;
        Ok(n > 0)
    }
}
