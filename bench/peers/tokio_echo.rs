//! The framework's ceiling: the smallest correct tokio upper-case echo
//! server (a task per connection, a fixed buffer, no limits, no timeouts).
//! Usage: tokio_echo 127.0.0.1:PORT
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:19001".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("ready {}", listener.local_addr()?);
    loop {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf[..n].make_ascii_uppercase();
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}
