//! A connection limit a reload can change while connections hold it.
//!
//! The limit is a semaphore whose permits the connections hold. Raising it adds permits.
//! Lowering it cannot take permits from connections: `Semaphore::forget_permits` removes only
//! free ones, and a new semaphore leaves the open connections uncounted (both would admit
//! more connections than the new limit, and past the descriptor budget). What is not free is
//! taken as connections end, by a task waiting for it ahead of every new connection (tokio's
//! semaphore is fair), so no connection is admitted until the open ones are under the new limit.
//! Until that task first runs (the next turn of the loop), a slot that frees may still go to a
//! new connection, as may one an accept loop was already waiting for: the limit is then over
//! by those few for as long as they last.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Change `limit` from `from` permits to `to`.
pub fn resize(limit: &Arc<Semaphore>, from: usize, to: usize) {
    if to >= from {
        limit.add_permits(to - from);
        return;
    }
    let cut = from - to;
    let owed = cut - limit.forget_permits(cut);
    if owed == 0 {
        return;
    }
    // The limit's own bound (1..=1,000,000 in both configs) fits; a larger one is taken whole.
    let owed = u32::try_from(owed).unwrap_or(u32::MAX);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(owed, "connection limit lowered outside a runtime: it falls as far as free slots allow");
        return;
    };
    let limit = limit.clone();
    runtime.spawn(async move {
        // Closed: the server is gone, and the limit with it.
        if let Ok(taken) = limit.acquire_many_owned(owed).await {
            taken.forget();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Let the task that takes what is owed run.
    async fn settle() {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn lowering_takes_free_slots_at_once_and_held_ones_as_they_end() {
        let limit = Arc::new(Semaphore::new(4));
        let held: Vec<_> = (0..3).map(|_| limit.clone().try_acquire_owned().expect("free")).collect();
        // 4 -> 1 with 3 held: the free slot goes now, 2 more as connections end.
        resize(&limit, 4, 1);
        settle().await;
        assert_eq!(limit.available_permits(), 0);
        let mut held = held.into_iter();
        drop(held.next());
        settle().await;
        assert_eq!(limit.available_permits(), 0, "two open: still over the limit of 1");
        drop(held.next());
        settle().await;
        assert_eq!(limit.available_permits(), 0, "one open: at the limit");
        // A new connection waits behind what is owed, not beside it.
        assert!(limit.clone().try_acquire_owned().is_err());
        drop(held.next());
        settle().await;
        assert_eq!(limit.available_permits(), 1, "none open: the one slot of the new limit");
    }

    #[tokio::test]
    async fn raising_while_owed_pays_the_debt_first() {
        let limit = Arc::new(Semaphore::new(2));
        let held: Vec<_> = (0..2).map(|_| limit.clone().try_acquire_owned().expect("free")).collect();
        resize(&limit, 2, 1);
        settle().await;
        // 1 -> 3 while one slot is owed: the limit is 3 with two connections open.
        resize(&limit, 1, 3);
        settle().await;
        assert_eq!(limit.available_permits(), 1);
        drop(held);
        settle().await;
        assert_eq!(limit.available_permits(), 3);
    }

    #[tokio::test]
    async fn two_lowers_in_a_row_and_a_raise_before_the_debt_task_ran() {
        let limit = Arc::new(Semaphore::new(4));
        let held: Vec<_> = (0..4).map(|_| limit.clone().try_acquire_owned().expect("free")).collect();
        // 4 -> 3 -> 1 with 4 held: 3 owed, by two tasks that have not run yet; then 1 -> 2.
        resize(&limit, 4, 3);
        resize(&limit, 3, 1);
        resize(&limit, 1, 2);
        settle().await;
        // The raise's slot paid a debt: still nothing free with 4 open and a limit of 2.
        assert_eq!(limit.available_permits(), 0);
        let mut held = held.into_iter();
        for open in (2..4).rev() {
            drop(held.next());
            settle().await;
            assert_eq!(limit.available_permits(), 0, "{open} open, limit 2");
        }
        drop(held.next());
        settle().await;
        assert_eq!(limit.available_permits(), 1, "1 open, limit 2");
        drop(held.next());
        settle().await;
        assert_eq!(limit.available_permits(), 2, "none open, limit 2");
    }

    #[test]
    fn lowering_free_slots_needs_no_runtime() {
        let limit = Arc::new(Semaphore::new(5));
        resize(&limit, 5, 2);
        assert_eq!(limit.available_permits(), 2);
        resize(&limit, 2, 6);
        assert_eq!(limit.available_permits(), 6);
    }
}
