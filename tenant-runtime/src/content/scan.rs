//! Malware scanning with ClamAV's daemon over its `INSTREAM` protocol: the content is sent in
//! length-prefixed chunks while it is being stored, and clamd's verdict decides whether the
//! upload is kept. An unreachable or failing scanner refuses the upload (fail closed).

use std::time::Duration;

use portico_core::settings::ClamdAddress;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// clamd scans the whole stream after its end; a large file takes a while.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("the malware scanner is unreachable: {0}")]
    Unreachable(String),
    #[error("the malware scanner failed: {0}")]
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected(String),
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

#[derive(Debug, Clone)]
pub struct Scanner {
    address: ClamdAddress,
}

/// One scan in progress.
pub struct ScanSession {
    conn: Box<dyn Conn>,
}

impl Scanner {
    pub fn new(address: ClamdAddress) -> Self {
        Self { address }
    }

    /// Opens a scan, or `None` when scanning is turned off (the demo).
    pub async fn start(&self) -> Result<Option<ScanSession>, ScanError> {
        let conn: Box<dyn Conn> = match &self.address {
            ClamdAddress::Disabled => return Ok(None),
            ClamdAddress::Unix(path) => Box::new(
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| ScanError::Unreachable("connect timed out".into()))?
                    .map_err(|e| ScanError::Unreachable(e.to_string()))?,
            ),
            ClamdAddress::Tcp(addr) => Box::new(
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| ScanError::Unreachable("connect timed out".into()))?
                    .map_err(|e| ScanError::Unreachable(e.to_string()))?,
            ),
        };
        let mut s = ScanSession { conn };
        s.conn
            .write_all(b"zINSTREAM\0")
            .await
            .map_err(|e| ScanError::Unreachable(e.to_string()))?;
        Ok(Some(s))
    }
}

impl ScanSession {
    pub async fn feed(&mut self, mut data: &[u8]) -> Result<(), ScanError> {
        while !data.is_empty() {
            let n = data.len().min(MAX_CHUNK);
            let len = u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
            self.conn
                .write_all(&len)
                .await
                .map_err(|e| ScanError::Failed(e.to_string()))?;
            self.conn
                .write_all(&data[..n])
                .await
                .map_err(|e| ScanError::Failed(e.to_string()))?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Ends the stream and waits for clamd's verdict.
    pub async fn finish(mut self) -> Result<Verdict, ScanError> {
        let work = async {
            self.conn
                .write_all(&[0, 0, 0, 0])
                .await
                .map_err(|e| ScanError::Failed(e.to_string()))?;
            let mut reply = Vec::new();
            let mut buf = [0u8; 512];
            loop {
                let n = self
                    .conn
                    .read(&mut buf)
                    .await
                    .map_err(|e| ScanError::Failed(e.to_string()))?;
                reply.extend_from_slice(&buf[..n]);
                if n == 0 || reply.contains(&0) || reply.len() > 4096 {
                    break;
                }
            }
            parse_reply(&reply)
        };
        tokio::time::timeout(VERDICT_TIMEOUT, work)
            .await
            .map_err(|_| ScanError::Failed("no verdict in time".into()))?
    }
}

fn parse_reply(reply: &[u8]) -> Result<Verdict, ScanError> {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim_end_matches(['\0', '\n']).trim();
    let body = text.strip_prefix("stream:").map(str::trim).unwrap_or(text);
    if body == "OK" {
        Ok(Verdict::Clean)
    } else if let Some(name) = body.strip_suffix(" FOUND") {
        Ok(Verdict::Infected(name.trim().to_owned()))
    } else {
        Err(ScanError::Failed(format!("unexpected answer '{body}'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply(b"stream: OK\0").unwrap(), Verdict::Clean);
        assert_eq!(
            parse_reply(b"stream: Portico.Test.EICAR.UNOFFICIAL FOUND\0").unwrap(),
            Verdict::Infected("Portico.Test.EICAR.UNOFFICIAL".into())
        );
        assert!(parse_reply(b"INSTREAM size limit exceeded. ERROR\0").is_err());
        assert!(parse_reply(b"").is_err());
    }
}
