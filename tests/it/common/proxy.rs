//! A TCP proxy in front of the PostgreSQL server, for tests that cut a worker off its database:
//! it forwards while [`Mode::Forward`], closes every connection (and each new one at once) on
//! [`Mode::Reset`], and on [`Mode::BlackHole`] keeps the connections open but drops whatever
//! the client sends and answers nothing, as a network partition does.

use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Reset,
    BlackHole,
}

/// A running proxy; dropping it stops accepting (open connections end with their tasks).
pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding connections on a free loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (mode, rx) = watch::channel(Mode::Forward);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, upstream, rx.clone()));
            }
        });
        Proxy { port, mode, accept }
    }

    /// Switches every open and future connection to `mode`.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// `url` (a `postgres://` URL naming `upstream`'s `host:port`) pointed at this proxy.
    pub fn url(&self, url: &str, upstream: &str) -> String {
        assert!(url.contains(upstream), "{url} does not name {upstream}");
        url.replacen(upstream, &format!("127.0.0.1:{}", self.port), 1)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set(Mode::Reset);
    }
}

/// One client connection, for as long as the mode allows.
async fn serve(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if *mode.borrow_and_update() == Mode::Forward {
        let Ok(mut server) = TcpStream::connect(upstream).await else {
            return;
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
            _ = mode.wait_for(|m| *m != Mode::Forward) => {}
        }
        // The server's side ends here, as it would once a partition outlasted its timeouts.
        drop(server);
    }
    if *mode.borrow() == Mode::Reset {
        return;
    }
    // Black hole: read and drop everything, answer nothing, until told to reset.
    let mut sink = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = client.read(&mut sink) => {
                if matches!(r, Ok(0) | Err(_)) {
                    return;
                }
            }
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() != Mode::BlackHole {
                    return;
                }
            }
        }
    }
}
