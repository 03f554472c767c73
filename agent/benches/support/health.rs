//! The agent's liveness as a client sees it while a bench loads the agent.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Whether `GET /healthz` on the admin `port` answers 200 within 2 s.
pub async fn healthy(port: u16) -> bool {
    let probe = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut buf = vec![0u8; 64];
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), probe).await.ok().flatten().unwrap_or(false)
}
