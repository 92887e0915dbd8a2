//! Bounds how often the operator writes one object's status, whatever the attack volume.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows one write per key per `interval`; tells the caller how long to wait otherwise.
pub struct WriteThrottle {
    interval: Duration,
    last: Mutex<HashMap<(String, String), Instant>>,
}

impl WriteThrottle {
    pub fn new(interval: Duration) -> Self {
        WriteThrottle {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok(())` and records the write if allowed now, else `Err(wait)`.
    pub fn try_acquire(&self, key: &(String, String), now: Instant) -> Result<(), Duration> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(prev) = last.get(key) {
            let elapsed = now.saturating_duration_since(*prev);
            if elapsed < self.interval {
                return Err(self.interval - elapsed);
            }
        }
        last.insert(key.clone(), now);
        Ok(())
    }
}

/// A token bucket refilled at `per_minute` tokens a minute, holding at most `per_minute`.
pub struct EventBudget {
    buckets: Mutex<HashMap<(String, String), (f64, Instant)>>,
}

impl Default for EventBudget {
    fn default() -> Self {
        EventBudget {
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

impl EventBudget {
    /// Takes one token for `key` if there is one.
    pub fn take(&self, key: &(String, String), per_minute: u32, now: Instant) -> bool {
        let capacity = per_minute.max(1) as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = buckets.entry(key.clone()).or_insert((capacity, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * capacity / 60.0;
        *tokens = (*tokens + refill).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_allows_one_write_per_interval() {
        let t = WriteThrottle::new(Duration::from_secs(2));
        let key = ("ns".to_string(), "a".to_string());
        let start = Instant::now();
        assert!(t.try_acquire(&key, start).is_ok());
        assert_eq!(
            t.try_acquire(&key, start + Duration::from_millis(500)),
            Err(Duration::from_millis(1500))
        );
        assert!(
            t.try_acquire(&("ns".into(), "b".into()), start).is_ok(),
            "keys are independent"
        );
        assert!(t.try_acquire(&key, start + Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn budget_bounds_events_per_minute() {
        let b = EventBudget::default();
        let key = ("ns".to_string(), "p".to_string());
        let start = Instant::now();
        let granted = (0..100).filter(|_| b.take(&key, 12, start)).count();
        assert_eq!(granted, 12, "a burst gets the bucket's capacity");
        assert!(!b.take(&key, 12, start + Duration::from_secs(1)));
        assert!(
            b.take(&key, 12, start + Duration::from_secs(5)),
            "one token every 5 s at 12/min"
        );
    }
}
