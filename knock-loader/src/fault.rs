//! Fault injection for the tests, in debug builds only. `XKNOCK_FAULTS=NAME[:N],...`
//! makes the step called NAME fail as the kernel or the disk could, every time or the
//! first N times. Release builds compile every check to `false`.

/// Whether step `name` is to fail now.
pub fn injected(name: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        use std::{collections::HashMap, sync::Mutex};
        static FIRED: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);
        let Ok(faults) = std::env::var("XKNOCK_FAULTS") else {
            return false;
        };
        let Some(spec) = faults.split(',').find(|f| f.split(':').next() == Some(name)) else {
            return false;
        };
        let Some(times) = spec.split_once(':').and_then(|(_, n)| n.parse::<u32>().ok()) else {
            return true;
        };
        let mut fired = FIRED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = fired.get_or_insert_default().entry(name.to_owned()).or_default();
        *count += 1;
        if *count <= times {
            log::warn!("fault injected: {name} ({count} of {times})");
        }
        *count <= times
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = name;
        false
    }
}
