//! A newcomer's fresh machine: the guest and rig builds fetch Debian packages with `apt-get download`,
//! and a fresh machine's apt lists are empty. These tests point apt at empty private lists (through
//! `APT_CONFIG`, so the system's lists are not touched) and call the builds' own `deb_get` (from
//! `resources/rig/lib.sh`): as root it runs `apt-get update` itself and the download succeeds; as
//! another user it stops with one line naming the command to run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tests::env::{target_dir, workspace_root};
use tests::skip::report_skip;

/// A small package that the builds fetch anyway (the guest's initramfs busybox).
const PACKAGE: &str = "busybox-static";

/// A scratch directory with an apt configuration whose lists and cache are empty and private.
struct EmptyApt {
    root: PathBuf,
}

impl EmptyApt {
    fn new(name: &str) -> EmptyApt {
        let root = target_dir().join("fresh-apt").join(name);
        let _ = std::fs::remove_dir_all(&root);
        for sub in ["lists/partial", "cache/archives/partial", "dsavmm-cache"] {
            std::fs::create_dir_all(root.join(sub)).expect("create the scratch apt directories");
        }
        let conf = format!(
            "Dir::State::Lists \"{}\";\nDir::Cache \"{}\";\n",
            root.join("lists").display(),
            root.join("cache").display()
        );
        std::fs::write(root.join("apt.conf"), conf).expect("write the scratch apt.conf");
        EmptyApt { root }
    }

    /// Runs `deb_get PACKAGE` from lib.sh under `prefix` (e.g. `runuser -u nobody --`).
    fn deb_get(&self, prefix: &[&str]) -> Output {
        let lib = workspace_root().join("resources/rig/lib.sh");
        let script = format!(
            "set -euo pipefail; source '{}'; deb_get {PACKAGE}",
            lib.display()
        );
        let (program, args) = match prefix.split_first() {
            Some((p, rest)) => (*p, rest.to_vec()),
            None => ("bash", Vec::new()),
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        if !prefix.is_empty() {
            cmd.arg("bash");
        }
        cmd.arg("-c")
            .arg(script)
            .env("APT_CONFIG", self.root.join("apt.conf"))
            .env("DSAVMM_CACHE", self.root.join("dsavmm-cache"))
            // A private marker directory: an earlier run's "already updated" marker must not count.
            .env("TMPDIR", &self.root);
        cmd.output().expect("run bash")
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn empty_apt_lists_are_updated_by_the_build_as_root() {
    if !is_root() {
        report_skip(
            "empty_apt_lists_are_updated_by_the_build_as_root",
            "not root (apt-get update needs root)",
        );
        return;
    }
    let apt = EmptyApt::new("root");
    let out = apt.deb_get(&[]);
    let all = text(&out);
    assert!(
        out.status.success(),
        "deb_get failed on empty lists:\n{all}"
    );
    assert!(
        all.contains("running apt-get update"),
        "the update was not announced:\n{all}"
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        Path::new(&path).is_file() && path.contains(PACKAGE),
        "deb_get printed {path:?}, not a downloaded {PACKAGE} .deb:\n{all}"
    );
}

#[test]
fn empty_apt_lists_stop_a_non_root_build_with_one_line() {
    if !is_root() || Command::new("runuser").arg("--help").output().is_err() {
        report_skip(
            "empty_apt_lists_stop_a_non_root_build_with_one_line",
            "needs root and runuser to run the build as another user",
        );
        return;
    }
    let apt = EmptyApt::new("nobody");
    // The user must be able to write the scratch cache and read the workspace's scripts.
    let status = Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(&apt.root)
        .status()
        .expect("chmod");
    assert!(status.success());
    let out = apt.deb_get(&["runuser", "-u", "nobody", "--"]);
    let all = text(&out);
    if all.contains("Permission denied") && all.contains("lib.sh") {
        report_skip(
            "empty_apt_lists_stop_a_non_root_build_with_one_line",
            "user nobody cannot read the workspace",
        );
        return;
    }
    assert!(!out.status.success(), "deb_get succeeded as nobody:\n{all}");
    let lines: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines,
        [format!(
            "apt does not know {PACKAGE} (empty apt lists?): run 'sudo apt-get update' first"
        )],
        "expected exactly one line naming the command"
    );
}
