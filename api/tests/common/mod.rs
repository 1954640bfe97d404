//! A fake VMM for the API tests, the fuzz script and the benchmark: it answers
//! `ApiRequest`s the way the real VMM is meant to (lifecycle rules, 404 for unknown
//! devices, 409 when the state forbids a request), from a thread that blocks on the
//! eventfd and drains the channel, like the VMM's event loop.
//!
//! Special device ids trigger VMM misbehaviour for tests: `slow` (answers after 1.5 s),
//! `wrongkind` (wrong reply variant), `drop` (drops the reply sender).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::Duration;

use api::*;
use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;

/// A tiny VMM: lifecycle state, configuration, DSA devices.
pub struct FakeVmm {
    state: InstanceState,
    machine: MachineConfig,
    boot: Option<BootSource>,
    dsa: BTreeMap<String, DsaDeviceConfig>,
    logger: Option<LoggerConfig>,
    served: u64,
}

impl FakeVmm {
    pub fn new() -> Self {
        FakeVmm {
            state: InstanceState::NotStarted,
            machine: MachineConfig {
                vcpus: 1,
                memory_mib: 128,
            },
            boot: None,
            dsa: BTreeMap::new(),
            logger: None,
            served: 0,
        }
    }

    fn before_boot(&self, what: &str) -> Result<(), ApiError> {
        if self.state != InstanceState::NotStarted {
            return Err(ApiError::Conflict(format!(
                "{what} is only possible before boot; the VM is {:?}",
                self.state
            )));
        }
        Ok(())
    }

    pub fn handle(&mut self, req: ApiRequest) -> ApiResponse {
        self.served += 1;
        match req {
            ApiRequest::GetInstanceInfo => Ok(ApiReply::InstanceInfo(InstanceInfo {
                id: "fake".into(),
                state: self.state,
                vmm_version: VMM_VERSION.into(),
            })),
            ApiRequest::GetVmConfig => Ok(ApiReply::VmConfig(VmConfig {
                machine_config: Some(self.machine.clone()),
                boot_source: self.boot.clone(),
                dsa: self
                    .dsa
                    .iter()
                    .map(|(id, config)| DsaEntry {
                        id: id.clone(),
                        config: config.clone(),
                    })
                    .collect(),
                logger: self.logger.clone(),
            })),
            ApiRequest::PutMachineConfig(m) => {
                self.before_boot("changing machine-config")?;
                self.machine = m;
                Ok(ApiReply::Empty)
            }
            ApiRequest::GetMachineConfig => Ok(ApiReply::MachineConfig(self.machine.clone())),
            ApiRequest::PutBootSource(b) => {
                self.before_boot("changing boot-source")?;
                if b.kernel_image_path.contains("missing") {
                    return Err(ApiError::BadRequest(format!(
                        "kernel image {} not found",
                        b.kernel_image_path
                    )));
                }
                self.boot = Some(b);
                Ok(ApiReply::Empty)
            }
            ApiRequest::PutDsa(id, c) => {
                self.before_boot("adding a DSA")?;
                self.dsa.insert(id, c);
                Ok(ApiReply::Empty)
            }
            ApiRequest::GetDsa(id) => {
                if id == "slow" {
                    std::thread::sleep(Duration::from_millis(1500));
                }
                if id == "wrongkind" {
                    return Ok(ApiReply::Empty);
                }
                let config =
                    self.dsa.get(&id).cloned().ok_or_else(|| {
                        ApiError::NotFound(format!("no DSA device with id {id:?}"))
                    })?;
                let running = self.state != InstanceState::NotStarted;
                Ok(ApiReply::DsaDevice(DsaDeviceInfo {
                    id,
                    config,
                    state: if running {
                        json!({"enabled": true})
                    } else {
                        Value::Null
                    },
                    counters: if running {
                        json!({"descriptors": {"memmove": 3}})
                    } else {
                        Value::Null
                    },
                }))
            }
            ApiRequest::DeleteDsa(id) => {
                self.before_boot("removing a DSA")?;
                self.dsa
                    .remove(&id)
                    .map(|_| ApiReply::Empty)
                    .ok_or_else(|| ApiError::NotFound(format!("no DSA device with id {id:?}")))
            }
            ApiRequest::Action(a) => {
                use InstanceState::*;
                let next = match (a.action_type, self.state) {
                    (ActionType::InstanceStart, NotStarted) => {
                        if self.boot.is_none() {
                            return Err(ApiError::BadRequest("no boot-source configured".into()));
                        }
                        Running
                    }
                    (ActionType::Pause, Running) => Paused,
                    (ActionType::Resume, Paused) => Running,
                    (ActionType::SendCtrlAltDel, Running) => Running,
                    (ActionType::Shutdown, _) => Halted,
                    (t, s) => {
                        return Err(ApiError::Conflict(format!(
                            "{t:?} is not possible while {s:?}"
                        )))
                    }
                };
                self.state = next;
                Ok(ApiReply::Empty)
            }
            ApiRequest::GetMetrics => {
                let mut text =
                    prometheus_header("dsavmm_api_requests_total", "Requests.", "counter");
                text.push_str(&prometheus_line(
                    "dsavmm_api_requests_total",
                    &[],
                    self.served,
                ));
                Ok(ApiReply::Metrics(text))
            }
            ApiRequest::PutLogger(l) => {
                self.logger = Some(l);
                Ok(ApiReply::Empty)
            }
        }
    }
}

/// Runs the fake VMM like the real event loop: block on the eventfd, drain the channel.
pub fn spawn_fake_vmm(rx: Receiver<ApiMessage>, wake: EventFd) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut vmm = FakeVmm::new();
        let mut wakeups = 0u64;
        loop {
            if wake.read().is_err() {
                break;
            }
            wakeups += 1;
            loop {
                match rx.try_recv() {
                    Ok(msg) => {
                        if msg.request == ApiRequest::GetDsa("drop".into()) {
                            drop(msg);
                            continue;
                        }
                        msg.respond(|r| vmm.handle(r));
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return wakeups,
                }
            }
        }
        wakeups
    })
}
