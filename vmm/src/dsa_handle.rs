//! The VMM's handle on one virtual DSA, whichever backend runs it: the in-process device
//! model, or a vfio-user device whose state and counters live in a `dsa-server`.

use std::sync::{Arc, Mutex};

use devices::dsa::{DsaDevice, DsaStats};
use devices::vfio::device::{VfioDsa, VfioStats};
use devices::vfio_user::client::{ClientStats, VfioUserDsa};
use serde_json::{json, Value};

/// One virtual DSA of a VM.
#[derive(Clone)]
pub enum DsaHandle {
    /// The device model and software engine in this process.
    Local(Arc<Mutex<DsaDevice>>),
    /// A vfio-user client device.
    VfioUser(Arc<Mutex<VfioUserDsa>>),
    /// A physical DSA through kernel VFIO, mediated.
    Vfio(Arc<Mutex<VfioDsa>>),
}

impl DsaHandle {
    /// Work the VMM's event loop does for the device: a mediated DSA's physical software
    /// errors are forwarded to the guest (`VfioDsa::poll_misc`); nothing for the others. A
    /// device busy with a vCPU (a mediated command can take seconds) is left for the next
    /// tick: the event loop never waits for it, and the guest's own SWERR/INTCAUSE reads poll
    /// too.
    pub fn poll(&self) {
        if let DsaHandle::Vfio(d) = self {
            match d.try_lock() {
                Ok(mut d) => d.poll_misc(),
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().poll_misc(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
    }

    /// `GET /dsa/{id}`'s state and counters. For a vfio-user device: the server's state and
    /// counters (its statistics region) with the client's counters and the exits per
    /// descriptor added; `null` state when the server cannot be read.
    pub fn state_and_counters(&self) -> (Value, Value) {
        match self {
            DsaHandle::Local(d) => {
                let d = d.lock().unwrap_or_else(|e| e.into_inner());
                (
                    serde_json::to_value(d.state()).unwrap_or(Value::Null),
                    serde_json::to_value(d.stats()).unwrap_or(Value::Null),
                )
            }
            DsaHandle::VfioUser(d) => {
                let d = d.lock().unwrap_or_else(|e| e.into_inner());
                let client = d.client_stats();
                let server = d.server_stats().unwrap_or(Value::Null);
                let mut state = server.get("state").cloned().unwrap_or(Value::Null);
                if let Some(s) = state.as_object_mut() {
                    let engine = s.insert("backend".into(), json!("vfio-user"));
                    s.insert("server_backend".into(), engine.unwrap_or(Value::Null));
                }
                let mut counters = server.get("stats").cloned().unwrap_or(json!({}));
                let descriptors = counters
                    .get("descriptors")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if let Some(c) = counters.as_object_mut() {
                    c.insert(
                        "exits_per_descriptor".into(),
                        json!(exits_per_descriptor(&client, descriptors)),
                    );
                    c.insert(
                        "server".into(),
                        server.get("server").cloned().unwrap_or(Value::Null),
                    );
                    c.insert(
                        "client".into(),
                        serde_json::to_value(&client).unwrap_or(Value::Null),
                    );
                }
                (state, counters)
            }
            DsaHandle::Vfio(d) => {
                let d = d.lock().unwrap_or_else(|e| e.into_inner());
                let mut counters = serde_json::to_value(d.stats()).unwrap_or(json!({}));
                if let Some(c) = counters.as_object_mut() {
                    c.insert(
                        "vfio".into(),
                        serde_json::to_value(d.vfio_stats()).unwrap_or(Value::Null),
                    );
                }
                (
                    serde_json::to_value(d.state()).unwrap_or(Value::Null),
                    counters,
                )
            }
        }
    }

    /// The mediation's counters of a `backend=vfio` device.
    pub fn vfio_stats(&self) -> Option<VfioStats> {
        match self {
            DsaHandle::Vfio(d) => Some(d.lock().unwrap_or_else(|e| e.into_inner()).vfio_stats()),
            _ => None,
        }
    }

    /// The device counters (zero for a vfio-user server that cannot be read).
    pub fn stats(&self) -> DsaStats {
        match self {
            DsaHandle::Local(d) => d.lock().unwrap_or_else(|e| e.into_inner()).stats(),
            DsaHandle::Vfio(d) => d.lock().unwrap_or_else(|e| e.into_inner()).stats(),
            DsaHandle::VfioUser(d) => d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .server_stats()
                .and_then(|v| serde_json::from_value(v.get("stats")?.clone()).ok())
                .unwrap_or_default(),
        }
    }

    /// The vfio-user client's counters.
    pub fn client_stats(&self) -> Option<ClientStats> {
        match self {
            DsaHandle::Local(_) | DsaHandle::Vfio(_) => None,
            DsaHandle::VfioUser(d) => {
                Some(d.lock().unwrap_or_else(|e| e.into_inner()).client_stats())
            }
        }
    }
}

/// Portal stores that exited to dsavmm per descriptor the server ran (0 when none ran).
pub fn exits_per_descriptor(client: &ClientStats, descriptors: u64) -> f64 {
    if descriptors == 0 {
        0.0
    } else {
        client.portal_exits as f64 / descriptors as f64
    }
}
