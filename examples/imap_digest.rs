//! An independent IMAP client (async-imap) for the interop suite: logs in
//! over plaintext (through mailbridge), fetches every message of INBOX and
//! prints the message count and a SHA-256 over all bodies in sequence order,
//! so the result can be compared with a direct fetch from the server.
//!
//! Usage: imap_digest HOST:PORT USER PASSWORD

use futures::TryStreamExt;
use sha2::{Digest, Sha256};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, user, password] = args.as_slice() else {
        return Err("usage: imap_digest HOST:PORT USER PASSWORD".into());
    };
    let tcp = tokio::net::TcpStream::connect(addr.as_str()).await?;
    let mut client = async_imap::Client::new(tcp);
    client.read_response().await.ok_or("no greeting")??;
    let mut session = client
        .login(user, password)
        .await
        .map_err(|(e, _)| format!("login failed: {e}"))?;
    let mailbox = session.select("INBOX").await?;
    let mut fetches: Vec<_> = session
        .fetch("1:*", "BODY.PEEK[]")
        .await?
        .try_collect()
        .await?;
    fetches.sort_by_key(|f| f.message);
    let mut digest = Sha256::new();
    for f in &fetches {
        digest.update(f.body().ok_or("FETCH without a body")?);
    }
    session.logout().await?;
    let hex: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("exists {}", mailbox.exists);
    println!("fetched {}", fetches.len());
    println!("sha256 {hex}");
    Ok(())
}
