//! A TCP relay a test can cut: it forwards every connection to `upstream` while open;
//! cut, it closes the connections it carries and drops new ones at once, as a network
//! partition or a restarting server would look to the bridge.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct CutRelay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    carried: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl CutRelay {
    pub async fn start(upstream: SocketAddr) -> CutRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let open = Arc::new(AtomicBool::new(true));
        let carried: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (o, c) = (open.clone(), carried.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        CutRelay {
            addr,
            open,
            carried,
            accept,
        }
    }

    /// Closes every connection carried and refuses new ones until [`CutRelay::mend`].
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for task in self.carried.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn mend(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
