//! Sockets: loopback-only target resolution, connecting from a chosen 127.0.0.x source address, and the open-files
//! budget.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use tokio::net::{TcpSocket, TcpStream};

/// Resolves `host:port` and refuses anything outside the loopback range (127.0.0.0/8, ::1): the load generator
/// sends traffic to this machine only.
pub fn resolve_loopback(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let addr = addrs
        .iter()
        .copied()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first().copied())
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to load {addr}: only loopback targets (127.0.0.0/8, ::1) are allowed"
        ));
    }
    Ok(addr)
}

/// The `n`-th source address of a spread over `count` addresses 127.0.0.1 ..= 127.0.0.count (None for one
/// address: let the kernel choose).
pub fn source_ip(n: usize, count: usize) -> Option<Ipv4Addr> {
    if count <= 1 {
        return None;
    }
    let i = (n % count) as u32 + 1;
    Some(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + i))
}

/// Connects to `addr`, from `source` (port chosen by the kernel) when given. TCP_NODELAY is set: every write is a
/// whole message.
pub async fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let stream = match (source, addr.ip()) {
        (Some(src), IpAddr::V4(_)) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
            socket.connect(addr).await?
        }
        _ => TcpStream::connect(addr).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Raises the soft open-files limit to the hard one and returns it.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(resolve_loopback("127.0.0.1", 80).is_ok());
        assert!(resolve_loopback("127.3.2.1", 80).is_ok());
        assert!(resolve_loopback("10.0.0.1", 80).is_err());
        assert!(resolve_loopback("8.8.8.8", 80).is_err());
    }

    #[test]
    fn source_addresses_spread_over_127_0_0_x() {
        assert_eq!(source_ip(0, 1), None);
        assert_eq!(source_ip(0, 4), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(source_ip(5, 4), Some(Ipv4Addr::new(127, 0, 0, 2)));
    }
}
