//! The outbox's wake-up of its one consumer (the connection's task, or the long-poll or SSE
//! request that drains it): a flag and one registered waker.
//!
//! It does what `tokio::sync::Notify` with `notify_one` did here (a wake-up given while nobody
//! waits is kept for the next wait; a single consumer never misses one), with a smaller waiting
//! future: the consumer's wait is a `poll_fn` holding one pointer, where `Notify`'s `Notified`
//! (its waiter list entry) took ~70 bytes in the task of every idle connection (BENCHMARKS.md,
//! "Memory per idle connection"). One waiter at a time: the last to wait is the one woken, and
//! two tasks waiting at once may take each other's wake-up. The one place where two may wait on
//! one outbox, a long-poll request superseded by a newer one of the same session, passes the
//! wake-up on when it leaves (`transport/longpoll.rs`).

use futures_util::task::AtomicWaker;
use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

#[derive(Default)]
pub(super) struct Wakeup {
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Wakeup {
    /// Wakes the waiter, or the next one to wait.
    pub(super) fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A notify between the check and the registration woke the previous waker.
        if self.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Completes at the next [`Wakeup::notify`] (at once if one came since the last wait).
    pub(super) fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| self.poll_wait(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_notify_before_the_wait_is_kept_once() {
        let w = Wakeup::default();
        w.notify();
        w.notify();
        tokio::time::timeout(Duration::from_millis(100), w.wait())
            .await
            .expect("the kept wake-up");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), w.wait())
                .await
                .is_err(),
            "two notifies before a wait are one wake-up"
        );
    }

    #[test]
    fn no_larger_than_notify() {
        // Every outbox holds one: the swap from `Notify` must not grow it.
        assert!(std::mem::size_of::<Wakeup>() <= std::mem::size_of::<tokio::sync::Notify>());
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken() {
        let w = Arc::new(Wakeup::default());
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        w.notify();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("no panic");
    }
}
