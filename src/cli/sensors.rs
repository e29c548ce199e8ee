//! `teledge sensors`: commissioning (list ports, probe a device once) and `watch`, which reads
//! devices as the daemon does and prints the records.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use teledge::sensors::device::{probe, Device, DeviceSettings, SerialOpener};
use teledge::sensors::profile;

#[derive(Debug, clap::Subcommand)]
#[command(defer = true)]
pub enum SensorsCommand {
    /// List the serial ports of this machine with their USB ids and stable names.
    List,
    /// Read a device once and print what it answered (to check wiring and settings).
    Probe(ProbeArgs),
    /// Read devices continuously and print sensor and alert records as JSON Lines.
    Watch(WatchArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The port, preferably by stable name (`/dev/serial/by-id/...`).
    pub port: PathBuf,
    /// Device profile: a name from firmware-config (`xy-md02`) or a path to a TOML file.
    #[arg(long)]
    pub profile: String,
    /// Modbus address, instead of the profile's.
    #[arg(long)]
    pub address: Option<u8>,
    /// Baud rate, instead of the profile's.
    #[arg(long)]
    pub baud: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub device: ProbeArgs,
    /// The device's name in records (default: the port's file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds between polls (default: the profile's).
    #[arg(long)]
    pub poll_interval: Option<f64>,
    /// Seconds between sensor records (default: the poll interval).
    #[arg(long)]
    pub record_interval: Option<f64>,
    /// Longest wait between attempts to reopen a port that went away, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub reopen_max: f64,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    pub duration: Option<f64>,
}

pub fn run(command: SensorsCommand) -> anyhow::Result<ExitCode> {
    match command {
        SensorsCommand::List => list(),
        SensorsCommand::Probe(args) => probe_once(args),
        SensorsCommand::Watch(args) => watch(args),
    }
}

fn list() -> anyhow::Result<ExitCode> {
    let ports = teledge::sensors::discover::list_ports("/sys".as_ref(), "/dev".as_ref());
    let mut out = std::io::stdout().lock();
    if ports.is_empty() {
        writeln!(out, "no serial ports found")?;
    }
    for p in ports {
        let ids = match (&p.usb_vendor_id, &p.usb_product_id) {
            (Some(v), Some(d)) => format!("{v}:{d}"),
            _ => "-".into(),
        };
        let what = [&p.manufacturer, &p.product, &p.serial_number]
            .iter()
            .filter_map(|s| s.as_deref())
            .collect::<Vec<_>>()
            .join(" ");
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}",
            p.device,
            p.bus,
            ids,
            p.driver.as_deref().unwrap_or("-"),
            what
        )?;
        for name in &p.stable_names {
            writeln!(out, "\t-> {name}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads the profile and applies the command-line overrides; configuration problems exit 78.
fn settings(args: &ProbeArgs) -> Result<DeviceSettings, ExitCode> {
    let path = match profile::resolve(&args.profile, &profile::default_dirs()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("teledge: {e}");
            return Err(ExitCode::from(super::EXIT_CONFIG));
        }
    };
    let mut loaded = match profile::load(&path) {
        Ok(p) => p,
        Err(errors) => {
            for problem in &errors.0 {
                eprintln!("teledge: {}: {problem}", path.display());
            }
            return Err(ExitCode::from(super::EXIT_CONFIG));
        }
    };
    if let Some(address) = args.address {
        loaded.serial.modbus_address = Some(address);
    }
    if let Some(baud) = args.baud {
        loaded.serial.baud = baud;
    }
    let name = args
        .port
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "device".into());
    Ok(DeviceSettings::from_profile(name, &args.port, loaded))
}

fn probe_once(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let settings = match settings(&args) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} on {} ({:?}, {} baud)",
        settings.profile.model,
        settings.port.display(),
        settings.profile.protocol,
        settings.profile.serial.baud
    )?;
    match runtime.block_on(probe(&settings)) {
        Ok((sample, counters, alerts)) => {
            for (name, value) in &sample.values {
                let unit = settings
                    .profile
                    .readings
                    .iter()
                    .find(|r| &r.name == name)
                    .map(|r| r.unit.as_str())
                    .unwrap_or("");
                writeln!(out, "  {name} = {value} {unit}")?;
            }
            for (name, on) in &sample.states {
                writeln!(out, "  {name}: {}", if *on { "yes" } else { "no" })?;
            }
            for alert in alerts {
                writeln!(out, "  unsolicited alert: {alert:?}")?;
            }
            if counters.retries > 0 || counters.timeouts > 0 || counters.bad_crc > 0 {
                writeln!(out, "  (after problems: {counters:?})")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "  no reading: {e}")?;
            Ok(ExitCode::from(super::EXIT_FAILURE))
        }
    }
}

fn seconds(value: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{what} must be a positive number of seconds"))
}

fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let mut settings = match settings(&args.device) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if let Some(name) = &args.name {
        settings.name = name.clone();
    }
    if let Some(poll) = args.poll_interval {
        settings.poll_interval = seconds(poll, "--poll-interval")?;
        settings.record_interval = settings.poll_interval;
        settings.stale_after = settings.poll_interval * 3;
        settings.lost_after = settings.poll_interval * 3;
    }
    if let Some(every) = args.record_interval {
        settings.record_interval = seconds(every, "--record-interval")?;
    }
    settings.reopen_max = seconds(args.reopen_max, "--reopen-max")?;
    settings.reopen_min = settings.reopen_min.min(settings.reopen_max);
    let duration = args
        .duration
        .map(|d| seconds(d, "--duration"))
        .transpose()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let stop = tokio_util::sync::CancellationToken::new();
        let opener = SerialOpener {
            path: settings.port.clone(),
            serial: settings.profile.serial.clone(),
        };
        let device = Device::new(settings, opener, tx);
        let task = tokio::spawn(device.run(stop.clone()));
        let stop_after = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop_after);
        let mut stdout = std::io::stdout();
        loop {
            tokio::select! {
                record = rx.recv() => {
                    let Some(record) = record else { break };
                    let line = serde_json::to_string(&record)?;
                    writeln!(stdout, "{line}")?;
                    stdout.flush()?;
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = &mut stop_after => break,
            }
        }
        stop.cancel();
        // Records made while stopping still go out.
        while let Ok(Some(record)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            writeln!(stdout, "{}", serde_json::to_string(&record)?)?;
        }
        let counters = task.await?;
        eprintln!("teledge: port counters: {counters:?}");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
