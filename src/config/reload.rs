//! SIGHUP: which changed sections apply at once and which wait for a restart.

/// What a SIGHUP does with a changed configuration file, by top-level section: `uplink`
/// (reconnect with the new settings), `sensors` (the tasks restarted with the new set, when
/// there were sensors and still are) and `shutdown` (the drain deadline) apply at once;
/// every other section (`node`, `capture`, `hep`, `correlation`, `spool`, `privacy`,
/// `observe`, `fleet`, `hep_out`, `status`) and a change from or to no sensors at all take a restart;
/// `supervisor` applies at once while the status page runs (`[status] enabled` before and
/// after; see `crate::access::Access::replace`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    pub applied: Vec<&'static str>,
    pub needs_restart: Vec<&'static str>,
}

impl ReloadPlan {
    const SECTIONS: [&'static str; 15] = [
        "node",
        "capture",
        "hep",
        "correlation",
        "sensors",
        "spool",
        "privacy",
        "uplink",
        "observe",
        "shutdown",
        "fleet",
        "hep_out",
        "status",
        "supervisor",
        "listen",
    ];

    pub fn new(running: &toml::Table, new: &toml::Table) -> Self {
        let mut plan = ReloadPlan::default();
        let has_sensors = |t: &toml::Table| {
            t.get("sensors")
                .and_then(toml::Value::as_array)
                .is_some_and(|a| !a.is_empty())
        };
        let status_on = |t: &toml::Table| {
            t.get("status")
                .and_then(|s| s.get("enabled"))
                .and_then(toml::Value::as_bool)
                .unwrap_or(false)
        };
        for section in Self::SECTIONS {
            if running.get(section) == new.get(section) {
                continue;
            }
            let live = match section {
                "uplink" | "shutdown" => true,
                // Supervisors are replaced in the running access control (revocation
                // without a restart), when the page runs and still will.
                "supervisor" => status_on(running) && status_on(new),
                "sensors" => has_sensors(running) && has_sensors(new),
                _ => false,
            };
            if live {
                plan.applied.push(section);
            } else {
                plan.needs_restart.push(section);
            }
        }
        plan
    }

    pub fn summary(&self) -> String {
        let applied = if self.applied.is_empty() {
            "Nothing changed that applies at once".to_owned()
        } else {
            format!("Applied: {}", self.applied.join(", "))
        };
        let restart = if self.needs_restart.is_empty() {
            String::new()
        } else {
            format!(
                "; changed but needs a restart to take effect: {}",
                self.needs_restart.join(", ")
            )
        };
        format!("{applied}{restart}; the uplink reconnects with the current certificates.")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reload_plan_applies_uplink_sensors_and_shutdown_and_names_the_rest() {
        let table = |text: &str| -> toml::Table { toml::from_str(text).unwrap() };
        let old = table("[uplink]\nurl = \"a\"\n[hep]\nudp = \"x\"\n[[sensors]]\nname = \"s\"\n");
        assert_eq!(ReloadPlan::new(&old, &old), ReloadPlan::default());
        let new = table("[uplink]\nurl = \"b\"\n[hep]\nudp = \"y\"\n[[sensors]]\nname = \"t\"\n[shutdown]\ndrain_timeout_s = 5\n");
        let plan = ReloadPlan::new(&old, &new);
        assert_eq!(plan.applied, ["sensors", "uplink", "shutdown"]);
        assert_eq!(plan.needs_restart, ["hep"]);
        assert!(plan
            .summary()
            .contains("needs a restart to take effect: hep"));
        // From some sensors to none: the health stages are set at start, so a restart.
        let none = table("[uplink]\nurl = \"a\"\n[hep]\nudp = \"x\"\n");
        assert_eq!(ReloadPlan::new(&old, &none).needs_restart, ["sensors"]);
    }
}
