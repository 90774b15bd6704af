//! Commands between "ordered to start" and "process group known". A
//! command's first process runs before the daemon hears which group it leads
//! (the spawn answers after the exec), so the control socket waits for the
//! starts under way before it decides whether a client is one of this
//! daemon's commands: else a fast command could act as the operator in that
//! moment.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// The starts under way, each numbered in the order it began.
#[derive(Default)]
pub struct Starts {
    /// The next start's number, and the numbers of those not yet settled.
    state: Mutex<State>,
    /// Woken whenever a start settles.
    settled: Notify,
}

#[derive(Default)]
struct State {
    next: u64,
    open: BTreeSet<u64>,
}

/// One start under way; dropping it says its group is known (or that it
/// failed to start).
pub struct Start<'a> {
    starts: &'a Starts,
    number: u64,
}

impl Starts {
    /// A command is about to be started.
    pub fn begin(&self) -> Start<'_> {
        let mut state = self.state.lock().unwrap();
        let number = state.next;
        state.next += 1;
        state.open.insert(number);
        Start { starts: self, number }
    }

    /// Waits until every start begun before this call has settled, for at
    /// most `limit`; false when one had not by then. Starts begun later are
    /// not waited for, so a steady stream of commands cannot hold it up.
    pub async fn settle(&self, limit: Duration) -> bool {
        let horizon = self.state.lock().unwrap().next;
        let all_settled = async {
            loop {
                let notified = self.settled.notified();
                tokio::pin!(notified);
                // Registered before the check, so a start settling in
                // between still wakes this waiter.
                notified.as_mut().enable();
                if self.state.lock().unwrap().open.first().is_none_or(|&oldest| oldest >= horizon) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, all_settled).await.is_ok()
    }
}

impl Drop for Start<'_> {
    fn drop(&mut self) {
        self.starts.state.lock().unwrap().open.remove(&self.number);
        self.starts.settled.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_check_waits_for_the_starts_begun_before_it_and_no_others() {
        let starts = Starts::default();
        assert!(starts.settle(SHORT).await, "nothing under way");
        let first = starts.begin();
        assert!(!starts.settle(SHORT).await, "a start under way holds the check up");
        let (settled, ()) = tokio::join!(starts.settle(Duration::from_secs(30)), async {
            tokio::task::yield_now().await;
            drop(first);
        });
        assert!(settled, "the check goes on once the start is settled");
        let _older = starts.begin();
        let newer = starts.begin();
        drop(newer);
        assert!(!starts.settle(SHORT).await, "the older of two starts is still under way");
    }

    #[tokio::test]
    async fn a_start_begun_during_a_check_does_not_hold_it_up() {
        let starts = Starts::default();
        let first = starts.begin();
        let (settled, _later) = tokio::join!(starts.settle(Duration::from_secs(30)), async {
            tokio::task::yield_now().await;
            let later = starts.begin();
            drop(first);
            later
        });
        assert!(settled);
    }
}
