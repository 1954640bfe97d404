//! Serves the API on a UNIX socket with the test suite's fake VMM behind it, until killed.
//! For trying the API with curl and for `api/schemathesis.sh` without KVM:
//!
//! `cargo run -p api --example fake_vmm -- /tmp/dsavmm.sock`

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::mpsc::channel;

use vmm_sys_util::eventfd::EventFd;

fn main() {
    let Some(sock) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fake_vmm SOCKET_PATH");
        std::process::exit(2);
    };
    let (tx, rx) = channel();
    let evt = match EventFd::new(0) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("eventfd: {e}");
            std::process::exit(1);
        }
    };
    let server = match evt
        .try_clone()
        .map_err(|e| api::ApiError::io("eventfd clone", e))
        .and_then(|wake| api::start_api_server(&sock, tx, wake))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake_vmm: {e}");
            std::process::exit(1);
        }
    };
    println!("fake VMM serving on {}", server.path().display());
    let vmm = common::spawn_fake_vmm(rx, evt);
    let _ = vmm.join();
}
