//! A rig run driven through dsavmm's REST API: dsavmm serves `--api-sock` in L1, and once the guest
//! has halted `dsavmm remote` reads the vDSA's counters (`GET /dsa/0`, printed between markers) and
//! shuts the VMM down; [`api_counters`] reads them back from the transcript.

use crate::parse::Layer;
use crate::rig::{RigOutput, Run};

const API_DSA_BEGIN: &str = "RIG-API-DSA-BEGIN";
const API_DSA_END: &str = "RIG-API-DSA-END";

/// The shell script of [`api_run`]: `dsavmm --api-sock S ARGS...` in the background, polled until
/// the guest halts (or dsavmm dies), `GET /dsa/0` between markers, then `Shutdown`; its exit status
/// is dsavmm's.
pub fn api_script(args: &[&str]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    format!(
        "S=/tmp/dsavmm-api.sock; dsavmm --api-sock $S {} & p=$!; \
         while kill -0 $p 2>/dev/null && ! dsavmm remote --api-sock $S info 2>/dev/null | grep -q Halted; \
         do sleep 1; done; \
         echo {API_DSA_BEGIN}; dsavmm remote --api-sock $S dsa 0; echo; echo {API_DSA_END}; \
         dsavmm remote --api-sock $S shutdown; wait $p",
        quoted.join(" ")
    )
}

/// A run of L1's /init that executes [`api_script`].
pub fn api_run(args: &[&str]) -> Run {
    Run::command("sh", ["-c".to_string(), api_script(args)])
}

/// The vDSA counters `GET /dsa/0` returned in run `run` of an [`api_run`].
pub fn api_counters(out: &RigOutput, run: usize) -> Result<serde_json::Value, String> {
    let lines: Vec<&str> = out
        .lines_of(run, Layer::L2)
        .chain(out.lines_of(run, Layer::Dsavmm))
        .map(|l| l.text.as_str())
        .collect();
    let begin = lines
        .iter()
        .position(|l| l.contains(API_DSA_BEGIN))
        .ok_or("no GET /dsa/0 output in the API run")?;
    let end = lines[begin..]
        .iter()
        .position(|l| l.contains(API_DSA_END))
        .ok_or("GET /dsa/0 output not terminated")?;
    let text: String = lines[begin + 1..begin + end].concat();
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("GET /dsa/0 is not JSON ({e}): {text}"))?;
    Ok(v["counters"].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_every_argument() {
        let s = api_script(&["run", "--cmdline", "a b 'c'"]);
        assert!(s.contains("'run' '--cmdline' 'a b '\\''c'\\'''"), "{s}");
        assert!(s.contains(API_DSA_BEGIN) && s.contains(API_DSA_END));
    }
}
