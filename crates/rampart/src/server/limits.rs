//! How many connections are served: the descriptor budget, the per-client cap, and
//! `accept` failures that mean the process is out of descriptors.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};

use super::Shared;

/// Raises the process's soft limit on open files to its hard limit, and warns when
/// `max_connections` plus `reserve` (database and upstream pools, logs, the listener)
/// does not fit under it: past it `accept` fails with EMFILE and the listener backs off.
/// Returns the limit in force, if known.
pub fn descriptor_budget(max_connections: usize, reserve: u64) -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let needed = u64::try_from(max_connections)
                .unwrap_or(u64::MAX)
                .saturating_add(reserve);
            if needed > limit {
                tracing::warn!(
                    open_files = limit,
                    needed,
                    "server.max_connections plus the descriptors Rampart needs besides exceed \
                     the open-file limit (ulimit -n): lower max_connections or raise the limit"
                );
            } else {
                tracing::debug!(open_files = limit, needed, "open-file limit");
            }
            Some(limit)
        }
        Err(error) => {
            tracing::warn!(error = %error, "the open-file limit cannot be read or raised");
            None
        }
    }
}

/// Descriptors Rampart uses besides client connections: its database pool, upstream
/// connection pools (256 idle per upstream at most) and 64 for logs, the listener, DNS
/// and the like.
pub fn descriptor_reserve(database_pool: u32, upstreams: usize) -> u64 {
    u64::from(database_pool)
        .saturating_add(
            u64::try_from(upstreams)
                .unwrap_or(u64::MAX)
                .saturating_mul(256),
        )
        .saturating_add(64)
}

/// Connections open per client address, for `server.max_connections_per_ip`.
#[derive(Debug, Default)]
pub(super) struct PerClient(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PerClient {
    /// A place for one more connection from `key`, unless it holds `cap` already.
    pub(super) fn admit(self: &Arc<Self>, key: std::net::IpAddr, cap: usize) -> Option<ClientSlot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            clients: Arc::clone(self),
            key,
        })
    }
}

/// One connection's place in [`PerClient`], given back when it closes.
pub(super) struct ClientSlot {
    clients: Arc<PerClient>,
    key: std::net::IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .clients
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A place for a connection from `peer`, or the key it is counted under when that holds
/// `max_connections_per_ip` already. Trusted proxies carry many clients: not counted.
pub(super) fn client_slot(
    shared: &Arc<Shared>,
    peer: SocketAddr,
) -> Result<Option<ClientSlot>, std::net::IpAddr> {
    let ip = peer.ip().to_canonical();
    let config = &shared.state.config;
    if config
        .server
        .trusted_proxies
        .iter()
        .any(|network| network.contains(&ip))
    {
        return Ok(None);
    }
    let key = crate::client_ip::bucket(ip, config.rate_limits.ipv6_prefix);
    shared
        .per_client
        .admit(key, shared.limits.max_connections_per_ip)
        .map(Some)
        .ok_or(key)
}

/// Whether `accept` failed for want of descriptors (EMFILE, ENFILE), buffers (ENOBUFS) or
/// memory (ENOMEM): then the listener backs off. Every other error concerns the one
/// connection being accepted.
pub(super) fn is_exhaustion(error: &io::Error) -> bool {
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    const CODES: [i32; 4] = [24, 23, 55, 12];
    #[cfg(not(any(target_os = "macos", target_os = "ios", target_os = "freebsd")))]
    const CODES: [i32; 4] = [24, 23, 105, 12];
    error.kind() == io::ErrorKind::OutOfMemory
        || error
            .raw_os_error()
            .is_some_and(|code| CODES.contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn per_connection_accept_errors_are_told_apart_from_exhaustion() {
        // EMFILE, ENFILE, ENOBUFS, ENOMEM
        for code in [24, 23, 105, 12] {
            assert!(is_exhaustion(&io::Error::from_raw_os_error(code)), "{code}");
        }
        // ECONNABORTED, EPROTO, ENETUNREACH, EHOSTUNREACH, EPERM, ETIMEDOUT
        for code in [103, 71, 101, 113, 1, 110] {
            assert!(
                !is_exhaustion(&io::Error::from_raw_os_error(code)),
                "{code}"
            );
        }
        assert!(!is_exhaustion(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
    }
}
