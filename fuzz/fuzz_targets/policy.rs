//! Policy manifests are outside input for the proxy's policy directory and
//! `lanyard policy test`: any bytes must load and build into a policy or
//! errors that say what is wrong, and a policy that builds must answer,
//! never panic.
#![no_main]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;

use lanyard_policy::{Client, HttpRequest, Manifests, Policy, PolicyOptions, Workload};

fn evaluate(policy: &Policy) {
    let workload = Workload {
        namespace: "default".into(),
        labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
        named_ports: BTreeMap::from([("http".to_string(), 8080)]),
        default_policy: None,
    };
    let request = HttpRequest {
        path: "/healthz".into(),
        method: "GET".into(),
    };
    let clients = [
        Client {
            identity: Some("web.default.serviceaccount.identity.linkerd.cluster.local".into()),
            ip: [10, 1, 2, 3].into(),
        },
        Client {
            identity: None,
            ip: [192, 0, 2, 1].into(),
        },
    ];
    for client in &clients {
        for port in [80, 8080] {
            let _ = policy.authorize(&workload, port, client, None);
            let _ = policy.authorize(&workload, port, client, Some(&request));
            let _ = policy.server_ref(&workload, port);
            let _ = policy.server_protocol(&workload, port);
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // As the policy directory reads a file: invalid UTF-8 is replaced.
    let text = String::from_utf8_lossy(data);
    let mut manifests = Manifests::new();
    manifests.add_yaml(Path::new("fuzz.yaml"), &text);
    match manifests.build(&PolicyOptions::default()) {
        Ok(policy) => evaluate(&policy),
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused with no error");
            for e in &errors.0 {
                assert!(!e.message.is_empty(), "an error without a message: {e:?}");
            }
        }
    }
});
