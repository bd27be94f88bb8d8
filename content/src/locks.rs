//! In-process exclusive locks on ingest references (containerd's `locks.go`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::landing::InFlight;
use crate::timestamp;

/// Held references: since when, and the holder's queued writes.
#[derive(Debug, Default)]
pub(crate) struct Locks {
    held: Mutex<HashMap<String, (SystemTime, Arc<InFlight>)>>,
}

impl Locks {
    fn map(&self) -> MutexGuard<'_, HashMap<String, (SystemTime, Arc<InFlight>)>> {
        // The map stays consistent even if a holder panicked.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the lock on `reference`, or fails with `Unavailable` if held.
    pub(crate) fn try_lock(self: &Arc<Self>, reference: &str) -> Result<RefLock> {
        let mut map = self.map();
        if let Some((since, _)) = map.get(reference) {
            let held_ms = SystemTime::now()
                .duration_since(*since)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            return Err(Error::Locked {
                reference: reference.to_string(),
                held_ms,
                since: timestamp::format(*since),
            });
        }
        let in_flight = Arc::new(InFlight::default());
        map.insert(
            reference.to_string(),
            (SystemTime::now(), Arc::clone(&in_flight)),
        );
        Ok(RefLock {
            locks: Arc::clone(self),
            reference: reference.to_string(),
            in_flight,
        })
    }

    /// Waits until the writes queued by the holder of `reference` (of every held
    /// reference: `None`) have landed, so that the data on disk is all there.
    pub(crate) fn wait_idle(&self, reference: Option<&str>) {
        let waiting: Vec<Arc<InFlight>> = {
            let map = self.map();
            match reference {
                Some(r) => map.get(r).map(|(_, f)| Arc::clone(f)).into_iter().collect(),
                None => map.values().map(|(_, f)| Arc::clone(f)).collect(),
            }
        };
        for in_flight in waiting {
            in_flight.wait_idle();
        }
    }

    #[cfg(test)]
    fn is_locked(&self, reference: &str) -> bool {
        self.map().contains_key(reference)
    }
}

/// A held reference lock; released on drop.
#[derive(Debug)]
pub(crate) struct RefLock {
    locks: Arc<Locks>,
    reference: String,
    in_flight: Arc<InFlight>,
}

impl RefLock {
    /// Where the holder's queued writes are tracked.
    pub(crate) fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }
}

impl Drop for RefLock {
    fn drop(&mut self) {
        self.locks.map().remove(&self.reference);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_errdefs::ErrorKind;

    #[test]
    fn exclusive_until_dropped() {
        let locks = Arc::new(Locks::default());
        let a = locks.try_lock("a").unwrap();
        let err = locks.try_lock("a").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().contains("ref a locked"), "{err}");
        let _b = locks.try_lock("b").unwrap();
        drop(a);
        assert!(!locks.is_locked("a"));
        let _a = locks.try_lock("a").unwrap();
        assert!(locks.is_locked("a"));
    }
}
