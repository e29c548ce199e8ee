//! The sensors component: one task per serial device, their records bridged into the record
//! queue. The set of tasks is replaced as a whole when SIGHUP brings other sensors.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::observe::Stage;
use crate::record::Record;
use crate::sensors::device::{Device, DeviceSettings, SerialOpener};

/// Readings of every device, bridged into the record queue.
#[derive(Debug)]
pub(super) struct Sensors {
    set: SensorSet,
    tx: mpsc::Sender<Record>,
    bridge: JoinHandle<()>,
    ctx: Context,
}

/// The running device tasks, stopped together.
#[derive(Debug)]
struct SensorSet {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Sensors {
    pub(super) fn build(devices: &[DeviceSettings], ctx: &Context) -> Self {
        let (tx, mut rx) = mpsc::channel::<Record>(1024);
        let set = SensorSet::start(devices, &tx, ctx);
        let records = ctx.records.clone();
        let metrics = Arc::clone(&ctx.metrics);
        let health = Arc::clone(&ctx.health);
        // No shutdown branch on purpose: the bridge ends when every device task has stopped
        // and the last sender is dropped, so a reading taken before the stop is kept.
        // A panic (a bug) is caught, announced, and stops the daemon.
        let guard = Arc::clone(&ctx.supervisor);
        let guard_records = ctx.records.clone();
        let bridge = ctx
            .tracker
            .spawn(guard.guard("sensors", guard_records, async move {
                while let Some(record) = rx.recv().await {
                    match &record {
                        Record::Sensor(s) => metrics.sensor_readings.with(&[&s.device]).inc(),
                        Record::Alert(a) => metrics.sensor_alerts.with(&[&a.device]).inc(),
                        _ => {}
                    }
                    health.progress(Stage::Sensors);
                    records.push(record);
                }
            }));
        Sensors {
            set,
            tx,
            bridge,
            ctx: ctx.clone(),
        }
    }

    /// Replaces the device tasks with ones for `devices` (SIGHUP).
    pub(super) async fn replace(&mut self, devices: &[DeviceSettings]) {
        let new = SensorSet::start(devices, &self.tx, &self.ctx);
        std::mem::replace(&mut self.set, new).stop().await;
    }

    /// Stops every device (each closes its port) and waits for the bridge to hand on the
    /// last readings.
    pub(super) async fn join(self) {
        self.set.stop().await;
        drop(self.tx);
        let _ = self.bridge.await;
    }
}

impl SensorSet {
    fn start(devices: &[DeviceSettings], tx: &mpsc::Sender<Record>, ctx: &Context) -> Self {
        // A child of the sources' token: stopped with every source, or alone on SIGHUP.
        let stop = ctx.sources.child_token();
        let tasks = devices
            .iter()
            .map(|device| {
                let opener = SerialOpener {
                    path: device.port.clone(),
                    serial: device.profile.serial.clone(),
                };
                tracing::info!(device = %device.name, port = %device.port.display(), model = %device.profile.model, "Reading sensor.");
                // A panic of a device's task (a bug in a profile's decoder) is caught,
                // announced, and stops the daemon.
                ctx.tracker.spawn(Arc::clone(&ctx.supervisor).guard(
                    "sensor",
                    ctx.records.clone(),
                    {
                        let run = Device::new(device.clone(), opener, tx.clone()).run(stop.clone());
                        async move {
                            run.await;
                        }
                    },
                ))
            })
            .collect();
        SensorSet { stop, tasks }
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
