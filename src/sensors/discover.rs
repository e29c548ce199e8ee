//! Serial ports of this machine, with USB vendor/product ids and the stable
//! `/dev/serial/by-id` names that point to them (`teledge sensors list`). Reads sysfs directly:
//! no libudev, so the binary stays self-contained for ARM boxes.

use std::fs;
use std::path::{Path, PathBuf};

/// One serial port.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PortInfo {
    /// `/dev/ttyUSB0`
    pub device: String,
    /// Stable names pointing to it (`/dev/serial/by-id/...`, `/dev/serial/by-path/...`).
    pub stable_names: Vec<String>,
    /// `usb`, `pci`, `platform`, ...
    pub bus: String,
    pub driver: Option<String>,
    pub usb_vendor_id: Option<String>,
    pub usb_product_id: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial_number: Option<String>,
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Lists serial ports: ttys under `sys_root/class/tty` that have a device behind them
/// (virtual consoles and ptys have none), with the stable names found under `dev_root`.
pub fn list_ports(sys_root: &Path, dev_root: &Path) -> Vec<PortInfo> {
    let mut stable: Vec<(PathBuf, String)> = Vec::new();
    for dir in ["serial/by-id", "serial/by-path"] {
        if let Ok(entries) = fs::read_dir(dev_root.join(dir)) {
            for entry in entries.flatten() {
                if let Ok(target) = fs::canonicalize(entry.path()) {
                    stable.push((target, entry.path().display().to_string()));
                }
            }
        }
    }
    let mut ports = Vec::new();
    let Ok(entries) = fs::read_dir(sys_root.join("class/tty")) else {
        return ports;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Ok(device) = fs::canonicalize(entry.path().join("device")) else {
            continue;
        };
        let subsystem = fs::canonicalize(device.join("subsystem"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .unwrap_or_default();
        // The kernel lists legacy 8250 ports without a UART behind them (type 0) anyway.
        if name.starts_with("ttyS") {
            let uart = read_trimmed(&entry.path().join("type"));
            if uart.as_deref() == Some("0") {
                continue;
            }
        }
        let driver = fs::canonicalize(device.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()));
        // The USB device is the nearest ancestor with an idVendor file.
        let usb = device
            .ancestors()
            .find(|p| p.join("idVendor").is_file())
            .map(Path::to_path_buf);
        let usb_attr = |attr: &str| usb.as_ref().and_then(|u| read_trimmed(&u.join(attr)));
        let dev_path = dev_root.join(&name);
        let mut names: Vec<String> = stable
            .iter()
            .filter(|(target, _)| *target == dev_path)
            .map(|(_, link)| link.clone())
            .collect();
        names.sort();
        ports.push(PortInfo {
            device: dev_path.display().to_string(),
            stable_names: names,
            bus: if usb.is_some() {
                "usb".into()
            } else {
                subsystem
            },
            driver,
            usb_vendor_id: usb_attr("idVendor"),
            usb_product_id: usb_attr("idProduct"),
            manufacturer: usb_attr("manufacturer"),
            product: usb_attr("product"),
            serial_number: usb_attr("serial"),
        });
    }
    ports.sort_by(|a, b| a.device.cmp(&b.device));
    ports
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs tree as the kernel lays out a CH340 adapter, built in a temporary directory.
    #[test]
    fn usb_adapter_with_stable_name() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path().join("sys");
        let dev = root.path().join("dev");
        let usb = sys.join("devices/pci0000:00/usb1/1-1");
        let iface = usb.join("1-1:1.0/ttyUSB0");
        fs::create_dir_all(&iface).unwrap();
        fs::create_dir_all(sys.join("bus/usb-serial")).unwrap();
        fs::create_dir_all(sys.join("bus/usb-serial/drivers/ch341-uart")).unwrap();
        symlink(sys.join("bus/usb-serial"), iface.join("subsystem")).unwrap();
        symlink(
            sys.join("bus/usb-serial/drivers/ch341-uart"),
            iface.join("driver"),
        )
        .unwrap();
        for (f, v) in [
            ("idVendor", "1a86"),
            ("idProduct", "7523"),
            ("product", "USB Serial"),
            ("serial", "A12345"),
        ] {
            fs::write(usb.join(f), format!("{v}\n")).unwrap();
        }
        let class = sys.join("class/tty/ttyUSB0");
        fs::create_dir_all(&class).unwrap();
        symlink(&iface, class.join("device")).unwrap();
        // A virtual console: no device, not listed.
        fs::create_dir_all(sys.join("class/tty/tty1")).unwrap();
        fs::create_dir_all(dev.join("serial/by-id")).unwrap();
        fs::write(dev.join("ttyUSB0"), b"").unwrap();
        symlink(
            dev.join("ttyUSB0"),
            dev.join("serial/by-id/usb-1a86_USB_Serial_A12345-if00-port0"),
        )
        .unwrap();

        let ports = list_ports(&sys, &dev);
        assert_eq!(ports.len(), 1, "{ports:?}");
        let p = &ports[0];
        assert_eq!(p.device, dev.join("ttyUSB0").display().to_string());
        assert_eq!(p.bus, "usb");
        assert_eq!(p.driver.as_deref(), Some("ch341-uart"));
        assert_eq!(p.usb_vendor_id.as_deref(), Some("1a86"));
        assert_eq!(p.usb_product_id.as_deref(), Some("7523"));
        assert_eq!(p.serial_number.as_deref(), Some("A12345"));
        assert_eq!(p.stable_names.len(), 1);
        assert!(p.stable_names[0].ends_with("usb-1a86_USB_Serial_A12345-if00-port0"));
    }
}
