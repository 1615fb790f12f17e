//! Graceful drain: a shared signal that tells listeners to stop accepting and connections to
//! finish their in-flight requests, and a way to wait for them with a deadline
//! (stop accepting → wait until the grace period → give up).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(Default)]
struct Open {
    count: AtomicUsize,
    notify: Notify,
}

/// The triggering side, held by `main`.
pub struct DrainTrigger {
    tx: watch::Sender<bool>,
    open: Arc<Open>,
}

/// The watching side, cloned into every listener and connection.
#[derive(Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
    open: Arc<Open>,
}

/// Held by a connection while it is open; drain waits for all of them.
pub struct ConnGuard(Arc<Open>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.notify.notify_waiters();
        }
    }
}

pub fn channel() -> (DrainTrigger, Watch) {
    let (tx, rx) = watch::channel(false);
    let open = Arc::new(Open::default());
    (
        DrainTrigger {
            tx,
            open: open.clone(),
        },
        Watch { rx, open },
    )
}

impl Watch {
    /// Resolves once draining has started.
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|d| *d).await;
    }
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
    /// Registers an open connection.
    pub fn conn_guard(&self) -> ConnGuard {
        self.open.count.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.open.clone())
    }
}

impl DrainTrigger {
    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.open.count.load(Ordering::Acquire)
    }

    /// Signals drain and waits until every connection guard is dropped or `grace` passes.
    /// Returns `true` when everything finished in time.
    pub async fn drain(self, grace: Duration) -> bool {
        let _ = self.tx.send(true);
        let open = self.open.clone();
        tokio::time::timeout(grace, async move {
            loop {
                let notified = open.notify.notified();
                if open.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_guards_then_returns() {
        let (trigger, watch) = channel();
        let g = watch.conn_guard();
        let w2 = watch.clone();
        let t = tokio::spawn(async move {
            w2.signaled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(g);
        });
        assert!(trigger.drain(Duration::from_secs(5)).await);
        t.await.unwrap();
    }

    #[tokio::test]
    async fn gives_up_after_grace() {
        let (trigger, watch) = channel();
        let _g = watch.conn_guard();
        assert!(!trigger.drain(Duration::from_millis(50)).await);
    }
}
