//! The OpenAPI 3 document (`api/openapi.json`, hand-written), served at
//! `GET /openapi.json`. The tests here keep it and the implementation in step: the routes,
//! the examples, the fields, required-ness, integer ranges and enum values.

/// The OpenAPI document, verbatim.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use serde_json::{json, Value};

    use super::OPENAPI_JSON;
    use crate::router::{resolve, Endpoint, ROUTES};
    use crate::types::*;
    use crate::API_VERSION;

    fn spec() -> Value {
        serde_json::from_str(OPENAPI_JSON).expect("openapi.json is valid JSON")
    }

    fn schema(name: &str) -> Value {
        spec()["components"]["schemas"][name].clone()
    }

    /// Follows a `$ref` (local components only).
    fn deref(v: &Value) -> Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let mut cur = spec();
                for part in r.trim_start_matches("#/").split('/') {
                    cur = cur[part].clone();
                }
                cur
            }
            None => v.clone(),
        }
    }

    #[test]
    fn header() {
        let s = spec();
        assert!(s["openapi"].as_str().unwrap().starts_with("3."));
        assert_eq!(s["info"]["version"], API_VERSION);
    }

    #[test]
    fn routes_match_spec_both_ways() {
        let s = spec();
        let mut from_spec = BTreeSet::new();
        for (path, item) in s["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    from_spec.insert((path.clone(), method.to_ascii_uppercase()));
                }
            }
        }
        let mut from_router = BTreeSet::new();
        for r in ROUTES {
            for m in r.methods {
                from_router.insert((r.path.to_string(), m.to_string()));
            }
        }
        assert_eq!(from_spec, from_router, "spec and router differ");
        // Each spec operation resolves through the real router (no 404/405).
        for (path, method) in &from_spec {
            let concrete = path.replace("{id}", "dsa_0");
            resolve(method, &concrete).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        }
    }

    #[test]
    fn request_examples_parse() {
        let s = spec();
        let mut seen = 0;
        for (path, item) in s["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let Some(rb) = op.get("requestBody") else {
                    continue;
                };
                let example = &rb["content"]["application/json"]["example"];
                assert!(!example.is_null(), "{method} {path} has no request example");
                let body = serde_json::to_vec(example).unwrap();
                let route =
                    resolve(&method.to_ascii_uppercase(), &path.replace("{id}", "0")).unwrap();
                let ep = route
                    .build(&body)
                    .unwrap_or_else(|e| panic!("{method} {path} example: {e}"));
                assert!(matches!(ep, Endpoint::Vmm(_)));
                seen += 1;
            }
        }
        assert_eq!(seen, 5);
    }

    fn parse_as<T: DeserializeOwned>(v: &Value) {
        serde_json::from_value::<T>(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"));
    }

    #[test]
    fn response_examples_parse() {
        let s = spec();
        let ex = |path: &str, method: &str| {
            s["paths"][path][method]["responses"]["200"]["content"]["application/json"]["example"]
                .clone()
        };
        parse_as::<InstanceInfo>(&ex("/", "get"));
        parse_as::<VersionInfo>(&ex("/version", "get"));
        parse_as::<MachineConfig>(&ex("/machine-config", "get"));
        parse_as::<DsaDeviceInfo>(&ex("/dsa/{id}", "get"));
        let cfg = serde_json::to_string(&ex("/vm/config", "get")).unwrap();
        parse_config_file(&cfg).unwrap();
        // Every response references an existing component, and every error is a Fault.
        for (_, item) in s["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                for (code, resp) in op["responses"].as_object().unwrap() {
                    let resp = deref(resp);
                    assert!(resp["description"].is_string(), "{code}");
                    if code.starts_with('4') || code == "default" {
                        assert_eq!(
                            resp["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/Fault"
                        );
                    }
                }
            }
        }
    }

    /// Checks one input type against its schema: the property names, which ones are
    /// required, every integer's minimum/maximum, every string enum.
    fn check_input<T: DeserializeOwned + Validate + Serialize>(name: &str, full: Value) {
        let sch = schema(name);
        let props = sch["properties"].as_object().unwrap();
        let spec_keys: BTreeSet<_> = props.keys().cloned().collect();
        let full_keys: BTreeSet<_> = full.as_object().unwrap().keys().cloned().collect();
        assert_eq!(spec_keys, full_keys, "{name}: properties differ");
        assert_eq!(sch["additionalProperties"], false, "{name}");
        let ok = |v: &Value| crate::types::parse_body::<T>(&serde_json::to_vec(v).unwrap()).is_ok();
        assert!(ok(&full), "{name}: full example rejected");
        let mut unknown = full.clone();
        unknown["not_a_field"] = json!(1);
        assert!(!ok(&unknown), "{name}: unknown field accepted");

        let required: BTreeSet<String> = sch["required"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        for key in &spec_keys {
            let mut without = full.clone();
            without.as_object_mut().unwrap().remove(key);
            // DsaDeviceConfig: socket is required by backend vfio-user only (checked below).
            if name == "DsaDeviceConfig" && key == "socket" {
                assert!(!ok(&without), "{name}: vfio-user without socket accepted");
                continue;
            }
            let accepted = ok(&without);
            // LoggerConfig needs at least one field; both are optional on their own.
            assert_eq!(
                accepted,
                !required.contains(key),
                "{name}.{key}: required-ness"
            );
            // No field is nullable in the spec, so an explicit null is rejected.
            let mut null = full.clone();
            null[key] = Value::Null;
            assert!(!ok(&null), "{name}.{key}: null accepted");
        }
        for (key, p) in props {
            let p = deref(p);
            if p["type"] == "integer" {
                let (min, max) = (
                    p["minimum"].as_i64().unwrap(),
                    p["maximum"].as_i64().unwrap(),
                );
                let with = |n: i64| {
                    let mut v = full.clone();
                    v[key] = json!(n);
                    ok(&v)
                };
                // DsaDeviceConfig: total_wq_size >= wqs is a cross-field rule; keep it true.
                let mut base = full.clone();
                if name == "DsaDeviceConfig" {
                    base["wqs"] = json!(1);
                    base["total_wq_size"] = json!(128);
                    // So is max_xfer_shift + max_batch_shift <= 31: the other one at its minimum.
                    match key.as_str() {
                        "max_xfer_shift" => base["max_batch_shift"] = json!(5),
                        "max_batch_shift" => base["max_xfer_shift"] = json!(21),
                        _ => {}
                    }
                }
                let with_base = |n: i64| {
                    let mut v = base.clone();
                    v[key] = json!(n);
                    ok(&v)
                };
                assert!(
                    with_base(min) && with_base(max),
                    "{name}.{key}: bounds rejected"
                );
                assert!(
                    !with(min - 1) && !with(max + 1),
                    "{name}.{key}: out of range accepted"
                );
            }
            if let Some(values) = p["enum"].as_array() {
                for v in values {
                    let mut x = full.clone();
                    x[key] = v.clone();
                    if v == "vfio" {
                        // Shown for command-line devices, refused in a request (400).
                        assert!(!ok(&x), "{name}: backend vfio accepted through the API");
                        continue;
                    }
                    if name == "DsaDeviceConfig" && v == "software" {
                        // socket and portal belong to vfio-user, and are refused with software.
                        assert!(!ok(&x), "{name}: software with a socket accepted");
                        let o = x.as_object_mut().unwrap();
                        o.remove("socket");
                        o.remove("portal");
                    }
                    assert!(ok(&x), "{name}.{key} = {v} rejected");
                }
                let mut x = full.clone();
                x[key] = json!("NoSuchValue");
                assert!(!ok(&x), "{name}.{key}: unknown enum value accepted");
            }
        }
    }

    #[test]
    fn input_schemas_match_types() {
        check_input::<MachineConfig>("MachineConfig", json!({"vcpus": 2, "memory_mib": 64}));
        check_input::<BootSource>(
            "BootSource",
            json!({"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "x"}),
        );
        check_input::<DsaDeviceConfig>(
            "DsaDeviceConfig",
            serde_json::to_value(DsaDeviceConfig {
                backend: DsaBackend::VfioUser,
                socket: Some("/tmp/dsa.sock".into()),
                portal: Some(PortalMode::Trapped),
                exec: Some(crate::types::DsaExecution::Inline),
                ..DsaDeviceConfig::default()
            })
            .unwrap(),
        );
        check_input::<Action>("Action", json!({"action_type": "Pause"}));
        check_input::<LoggerConfig>("LoggerConfig", json!({"level": "Info", "log_path": "/l"}));
    }

    #[test]
    fn output_schemas_match_types() {
        let keys =
            |v: Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
        let props = |n: &str| keys(schema(n)["properties"].clone());
        let req = |n: &str| -> BTreeSet<String> {
            schema(n)["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let info = InstanceInfo {
            id: "x".into(),
            state: InstanceState::Halted,
            vmm_version: "0".into(),
        };
        assert_eq!(
            keys(serde_json::to_value(&info).unwrap()),
            props("InstanceInfo")
        );
        assert_eq!(props("InstanceInfo"), req("InstanceInfo"));
        let states = schema("InstanceInfo")["properties"]["state"]["enum"].clone();
        let rust: Vec<Value> = [
            InstanceState::NotStarted,
            InstanceState::Running,
            InstanceState::Paused,
            InstanceState::Halted,
        ]
        .iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .collect();
        assert_eq!(states, Value::Array(rust));
        let v = VersionInfo {
            vmm_version: "a".into(),
            api_version: "b".into(),
        };
        assert_eq!(
            keys(serde_json::to_value(&v).unwrap()),
            props("VersionInfo")
        );
        let d = DsaDeviceInfo {
            id: "0".into(),
            config: DsaDeviceConfig::default(),
            state: Value::Null,
            counters: json!({}),
        };
        assert_eq!(
            keys(serde_json::to_value(&d).unwrap()),
            props("DsaDeviceInfo")
        );
        assert_eq!(props("DsaDeviceInfo"), req("DsaDeviceInfo"));
        // The config-file DSA entry is the device config plus the id.
        let mut entry = props("DsaDeviceConfig");
        entry.insert("id".into());
        assert_eq!(entry, props("DsaEntry"));
        // The VmConfig sections.
        let full = VmConfig {
            machine_config: Some(MachineConfig {
                vcpus: 1,
                memory_mib: 1,
            }),
            boot_source: Some(BootSource {
                kernel_image_path: "/k".into(),
                initrd_path: None,
                boot_args: None,
            }),
            dsa: vec![DsaEntry {
                id: "0".into(),
                config: DsaDeviceConfig::default(),
            }],
            logger: Some(LoggerConfig {
                level: Some(LogLevel::Off),
                log_path: None,
            }),
        };
        assert_eq!(
            keys(serde_json::to_value(&full).unwrap()),
            props("VmConfig")
        );
        let action_enum = schema("Action")["properties"]["action_type"]["enum"].clone();
        assert_eq!(action_enum.as_array().unwrap().len(), 5);
    }
}
