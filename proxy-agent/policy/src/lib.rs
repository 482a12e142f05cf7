//! Linkerd's inbound authorization policy: `Server`, `AuthorizationPolicy`,
//! `MeshTLSAuthentication`, `NetworkAuthentication`, `HTTPRoute` and the
//! default policies, compiled from manifests into a [`Policy`] that answers
//! "may this client reach this port (and route)?".
//!
//! The model does not know where the manifests came from (a directory in
//! local mode, the API in a cluster). Every reference is resolved when the
//! policy is built, so a policy that builds has no dangling references;
//! one that does not build names the document and field at fault.

pub mod manifest;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use ipnet::IpNet;
use lanyard_crds::identity::{Identity, IdentityDomain};
use serde::de::DeserializeOwned;

use manifest::{
    AuthorizationPolicySpec, GATEWAY_GROUP, HttpRouteSpec, LabelSelector,
    MeshTlsAuthenticationSpec, Meta, NetworkAuthenticationSpec, ObjectRef, POLICY_GROUP, PortRef,
    ServerSpec,
};

/// The policy for ports no Server covers (Linkerd's
/// `proxy.defaultInboundPolicy` and `config.linkerd.io/default-inbound-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Everyone.
    AllUnauthenticated,
    /// Meshed clients, from anywhere.
    AllAuthenticated,
    /// Meshed clients from the cluster's networks.
    ClusterAuthenticated,
    /// Anyone from the cluster's networks.
    ClusterUnauthenticated,
    /// No one.
    Deny,
    /// Everyone, recording what `deny` would have refused.
    Audit,
}

impl DefaultPolicy {
    const ALL: [DefaultPolicy; 6] = [
        DefaultPolicy::AllUnauthenticated,
        DefaultPolicy::AllAuthenticated,
        DefaultPolicy::ClusterAuthenticated,
        DefaultPolicy::ClusterUnauthenticated,
        DefaultPolicy::Deny,
        DefaultPolicy::Audit,
    ];

    /// How Linkerd labels this default in metrics (`srv_kind="default"`,
    /// `srv_name="all-authenticated"`), built once.
    fn label(self) -> PolicyRef {
        static LABELS: OnceLock<Vec<PolicyRef>> = OnceLock::new();
        let labels = LABELS.get_or_init(|| {
            DefaultPolicy::ALL
                .iter()
                .map(|p| PolicyRef::default_named(p.name()))
                .collect()
        });
        let index = DefaultPolicy::ALL
            .iter()
            .position(|p| *p == self)
            .unwrap_or_default();
        labels[index].clone()
    }

    /// Every name, for messages.
    pub const NAMES: &'static str = "all-unauthenticated, all-authenticated, cluster-authenticated, cluster-unauthenticated, deny, audit";

    /// The name, as in Linkerd.
    pub fn name(self) -> &'static str {
        match self {
            DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::ClusterAuthenticated => "cluster-authenticated",
            DefaultPolicy::ClusterUnauthenticated => "cluster-unauthenticated",
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::Audit => "audit",
        }
    }
}

impl FromStr for DefaultPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "all-unauthenticated" => DefaultPolicy::AllUnauthenticated,
            "all-authenticated" => DefaultPolicy::AllAuthenticated,
            "cluster-authenticated" => DefaultPolicy::ClusterAuthenticated,
            "cluster-unauthenticated" => DefaultPolicy::ClusterUnauthenticated,
            "deny" => DefaultPolicy::Deny,
            "audit" => DefaultPolicy::Audit,
            other => {
                return Err(format!(
                    "unknown policy `{other}`; use one of {}",
                    DefaultPolicy::NAMES
                ));
            }
        })
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Linkerd's default `clusterNetworks`.
pub const DEFAULT_CLUSTER_NETWORKS: [&str; 4] = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
];

/// What a manifest got wrong: the file, the document (1-based), the field
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file.
    pub file: PathBuf,
    /// The document, 1-based; 0 for the file as a whole.
    pub document: usize,
    /// The object, `Kind namespace/name`, when known.
    pub object: Option<String>,
    /// The field, e.g. `spec.targetRef.group`.
    pub field: Option<String>,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for PolicyError {}

/// Every error of a set of manifests, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Where a parsed object came from, for errors.
#[derive(Debug, Clone)]
struct Origin {
    file: PathBuf,
    document: usize,
    object: String,
}

impl Origin {
    fn error(&self, field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.file.clone(),
            document: self.document,
            object: Some(self.object.clone()),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Parsed<T> {
    /// The API group of its `apiVersion`.
    group: String,
    namespace: String,
    name: String,
    origin: Origin,
    spec: T,
}

/// The manifests of one load, parsed but not yet resolved.
#[derive(Debug, Default, Clone)]
pub struct Manifests {
    servers: Vec<Parsed<ServerSpec>>,
    policies: Vec<Parsed<AuthorizationPolicySpec>>,
    mesh_tls: Vec<Parsed<MeshTlsAuthenticationSpec>>,
    networks: Vec<Parsed<NetworkAuthenticationSpec>>,
    routes: Vec<Parsed<HttpRouteSpec>>,
    errors: Vec<PolicyError>,
}

impl Manifests {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the documents of one YAML stream read from `file`. Kinds that
    /// are not policy (Deployments, ServiceAccounts...) are skipped, so a
    /// whole application manifest can be given.
    pub fn add_yaml(&mut self, file: &Path, text: &str) {
        let documents: Vec<serde_json::Value> = match serde_saphyr::from_multiple(text) {
            Ok(docs) => docs,
            Err(e) => {
                self.errors.push(PolicyError {
                    file: file.to_path_buf(),
                    document: 0,
                    object: None,
                    field: None,
                    message: format!("not valid YAML: {e}"),
                });
                return;
            }
        };
        for (i, doc) in documents.into_iter().enumerate() {
            if !doc.is_null() {
                self.add_document(file, i + 1, doc);
            }
        }
    }

    /// Reads every `.yaml`, `.yml` and `.json` file in `dir` (not below).
    pub fn add_dir(&mut self, dir: &Path) -> std::io::Result<()> {
        for (path, bytes) in read_manifest_files(dir)? {
            self.add_yaml(&path, &String::from_utf8_lossy(&bytes));
        }
        Ok(())
    }

    fn add_document(&mut self, file: &Path, document: usize, doc: serde_json::Value) {
        let text = |field: &str| doc.get(field).and_then(|v| v.as_str()).map(str::to_string);
        let fail = |field: Option<&str>, message: String| PolicyError {
            file: file.to_path_buf(),
            document,
            object: None,
            field: field.map(str::to_string),
            message,
        };
        let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
            self.errors.push(fail(
                None,
                "not a Kubernetes object: apiVersion and kind are required".into(),
            ));
            return;
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let versions = match (group, kind.as_str()) {
            (POLICY_GROUP, "ServerAuthorization") => {
                self.errors.push(fail(
                    Some("kind"),
                    "ServerAuthorization is Linkerd's deprecated form; write an AuthorizationPolicy with requiredAuthenticationRefs instead".into(),
                ));
                return;
            }
            (group, kind) => match versions_read(group, kind) {
                Some(versions) => versions,
                None if group == POLICY_GROUP => {
                    self.errors.push(fail(
                        Some("kind"),
                        format!("`{kind}` is not a policy kind Lanyard knows (Server, AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication, HTTPRoute)"),
                    ));
                    return;
                }
                // Not policy: skipped.
                None => return,
            },
        };
        if !versions.contains(&version) {
            let named: Vec<String> = versions.iter().map(|v| format!("`{group}/{v}`")).collect();
            let fix = match named.as_slice() {
                [one] => format!("use {one}"),
                many => format!("use one of {}", many.join(", ")),
            };
            self.errors.push(fail(
                Some("apiVersion"),
                format!("`{api_version}` is not a version of {kind} that Lanyard reads; {fix}"),
            ));
            return;
        }
        let meta: Meta = match doc.get("metadata").cloned().map(serde_json::from_value) {
            Some(Ok(meta)) => meta,
            Some(Err(e)) => {
                self.errors.push(fail(Some("metadata"), e.to_string()));
                return;
            }
            None => {
                self.errors
                    .push(fail(Some("metadata.name"), "missing".into()));
                return;
            }
        };
        let namespace = meta.namespace.unwrap_or_else(|| "default".into());
        let origin = Origin {
            file: file.to_path_buf(),
            document,
            object: format!("{kind} {namespace}/{}", meta.name),
        };
        let spec = doc.get("spec").cloned().unwrap_or(serde_json::Value::Null);
        macro_rules! push {
            ($list:ident) => {
                match typed(spec) {
                    Ok(spec) => self.$list.push(Parsed {
                        group: group.to_string(),
                        namespace,
                        name: meta.name,
                        origin,
                        spec,
                    }),
                    Err((field, message)) => self.errors.push(origin.error(&field, message)),
                }
            };
        }
        match kind.as_str() {
            "Server" => push!(servers),
            "AuthorizationPolicy" => push!(policies),
            "MeshTLSAuthentication" => push!(mesh_tls),
            "NetworkAuthentication" => push!(networks),
            _ => push!(routes),
        }
    }

    /// Resolves every reference and builds the policy. All errors are
    /// returned together; nothing is half-built.
    pub fn build(self, options: &PolicyOptions) -> Result<Policy, PolicyErrors> {
        let mut errors = self.errors;
        let find = |list: &[(String, String)], ns: &str, name: &str| {
            list.iter().any(|(n, m)| n == ns && m == name)
        };
        let server_names: Vec<(String, String)> = self
            .servers
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let route_names: Vec<(String, String)> = self
            .routes
            .iter()
            .map(|r| (r.namespace.clone(), r.name.clone()))
            .collect();

        let mut authns: BTreeMap<(String, String, &'static str), Authn> = BTreeMap::new();
        for m in &self.mesh_tls {
            match compile_mesh_tls(m, &options.identity_domain) {
                Ok(a) => {
                    authns.insert(
                        (m.namespace.clone(), m.name.clone(), "MeshTLSAuthentication"),
                        a,
                    );
                }
                Err(e) => errors.push(e),
            }
        }
        for n in &self.networks {
            match compile_networks(n) {
                Ok(a) => {
                    authns.insert(
                        (n.namespace.clone(), n.name.clone(), "NetworkAuthentication"),
                        a,
                    );
                }
                Err(e) => errors.push(e),
            }
        }

        let mut servers = Vec::new();
        for s in &self.servers {
            match compile_server(s) {
                Ok(server) => servers.push(server),
                Err(e) => errors.push(e),
            }
        }

        let mut routes = Vec::new();
        for r in &self.routes {
            match compile_route(r) {
                Ok(route) => {
                    for parent in &route.parents {
                        if !find(&server_names, &route.namespace, parent) {
                            errors.push(r.origin.error(
                                "spec.parentRefs",
                                format!("Server `{}/{parent}` does not exist", route.namespace),
                            ));
                        }
                    }
                    routes.push(route);
                }
                Err(e) => errors.push(e),
            }
        }

        let mut authorizations = Vec::new();
        for p in &self.policies {
            match compile_policy(
                p,
                &authns,
                &server_names,
                &route_names,
                &options.identity_domain,
            ) {
                Ok(a) => authorizations.push(a),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        Ok(Policy {
            servers,
            routes,
            authorizations,
            default: options.default_policy,
            cluster_networks: options.cluster_networks.clone(),
        })
    }
}

/// How the policy treats what no manifest covers.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    /// The identity domain ServiceAccount and Namespace refs name
    /// identities in.
    pub identity_domain: IdentityDomain,
    /// The policy for ports no Server covers.
    pub default_policy: DefaultPolicy,
    /// The cluster's networks, for the `cluster-*` defaults.
    pub cluster_networks: Vec<IpNet>,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            identity_domain: IdentityDomain::linkerd_default(),
            default_policy: DefaultPolicy::AllUnauthenticated,
            cluster_networks: DEFAULT_CLUSTER_NETWORKS
                .iter()
                .map(|n| n.parse().expect("valid default network"))
                .collect(),
        }
    }
}

type FieldError = (String, String);

fn typed<T: DeserializeOwned>(spec: serde_json::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        (field, e.into_inner().to_string())
    })
}

/// One way a client can be authenticated.
#[derive(Debug, Clone)]
enum Authn {
    Identities(Vec<IdentityMatch>),
    Networks(Vec<(IpNet, Vec<IpNet>)>),
}

/// One entry of a MeshTLSAuthentication.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IdentityMatch {
    /// `*`: any meshed client.
    Any,
    /// An exact identity name.
    Exact(String),
    /// `*.<suffix>`: any identity ending in `.<suffix>`.
    Suffix(String),
}

impl IdentityMatch {
    fn matches(&self, identity: &str) -> bool {
        match self {
            IdentityMatch::Any => true,
            IdentityMatch::Exact(name) => name == identity,
            IdentityMatch::Suffix(suffix) => identity
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
        }
    }
}

fn compile_mesh_tls(
    m: &Parsed<MeshTlsAuthenticationSpec>,
    domain: &IdentityDomain,
) -> Result<Authn, PolicyError> {
    let mut matches = Vec::new();
    let identities = m.spec.identities.as_deref().unwrap_or_default();
    let refs = m.spec.identity_refs.as_deref().unwrap_or_default();
    if identities.is_empty() && refs.is_empty() {
        return Err(m.origin.error(
            "spec",
            "one of identities or identityRefs must list at least one entry",
        ));
    }
    if !identities.is_empty() && !refs.is_empty() {
        return Err(m.origin.error(
            "spec",
            "identities and identityRefs cannot both be set; use two MeshTLSAuthentications",
        ));
    }
    for (i, id) in identities.iter().enumerate() {
        let field = format!("spec.identities[{i}]");
        if id == "*" {
            matches.push(IdentityMatch::Any);
        } else if let Some(suffix) = id.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(m
                    .origin
                    .error(&field, format!("`{id}`: a wildcard is `*` or `*.<suffix>`")));
            }
            matches.push(IdentityMatch::Suffix(suffix.to_string()));
        } else if id.contains('*') {
            return Err(m.origin.error(
                &field,
                format!("`{id}`: `*` may only be the whole identity or its first label"),
            ));
        } else {
            Identity::from_str(id).map_err(|e| m.origin.error(&field, format!("`{id}`: {e}")))?;
            matches.push(IdentityMatch::Exact(id.clone()));
        }
    }
    for (i, r) in refs.iter().enumerate() {
        let field = format!("spec.identityRefs[{i}]");
        if !is_core(r.group.as_deref()) {
            return Err(m.origin.error(
                &format!("{field}.group"),
                format!(
                    "`{}`: ServiceAccount and Namespace are in the core group (leave it empty)",
                    r.group.as_deref().unwrap_or_default()
                ),
            ));
        }
        match (r.kind.as_str(), r.name.as_deref()) {
            ("ServiceAccount", name) => {
                let ns = r.namespace.as_deref().unwrap_or(&m.namespace);
                match name {
                    Some(name) => {
                        let id = Identity::new(name, ns, domain.clone())
                            .map_err(|e| m.origin.error(&format!("{field}.name"), e.to_string()))?;
                        matches.push(IdentityMatch::Exact(id.to_string()));
                    }
                    // No name: every ServiceAccount of the namespace.
                    None => matches.push(IdentityMatch::Suffix(format!(
                        "{ns}.serviceaccount.{domain}"
                    ))),
                }
            }
            ("Namespace", Some(ns)) => {
                matches.push(IdentityMatch::Suffix(format!(
                    "{ns}.serviceaccount.{domain}"
                )));
            }
            ("Namespace", None) => matches.push(IdentityMatch::Any),
            (other, _) => {
                return Err(m.origin.error(
                    &format!("{field}.kind"),
                    format!("`{other}`: identityRefs name ServiceAccounts or Namespaces"),
                ));
            }
        }
    }
    Ok(Authn::Identities(matches))
}

fn compile_networks(n: &Parsed<NetworkAuthenticationSpec>) -> Result<Authn, PolicyError> {
    if n.spec.networks.is_empty() {
        return Err(n
            .origin
            .error("spec.networks", "at least one network is required"));
    }
    let mut out = Vec::new();
    for (i, network) in n.spec.networks.iter().enumerate() {
        let parse =
            |field: String, text: &str| parse_network(text).map_err(|e| n.origin.error(&field, e));
        let cidr = parse(format!("spec.networks[{i}].cidr"), &network.cidr)?;
        let mut except = Vec::new();
        for (j, e) in network.except.iter().enumerate() {
            except.push(parse(format!("spec.networks[{i}].except[{j}]"), e)?);
        }
        out.push((cidr, except));
    }
    Ok(Authn::Networks(out))
}

/// A CIDR, or a bare address as a single-host network.
fn parse_network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not a network (e.g. 10.0.0.0/8)"))
}

/// What happens to a request on a Server.
#[derive(Debug, Clone)]
struct ServerPolicy {
    namespace: String,
    name: String,
    /// How metrics name it.
    label: PolicyRef,
    selector: LabelSelector,
    port: PortRef,
    protocol: Option<String>,
    access: Option<DefaultPolicy>,
}

fn compile_server(s: &Parsed<ServerSpec>) -> Result<ServerPolicy, PolicyError> {
    if s.spec.external_workload_selector.is_some() {
        return Err(s.origin.error(
            "spec.externalWorkloadSelector",
            "external workloads are not supported; select pods with podSelector",
        ));
    }
    let selector = s
        .spec
        .pod_selector
        .clone()
        .ok_or_else(|| s.origin.error("spec.podSelector", "missing"))?;
    for (i, e) in selector.match_expressions.iter().enumerate() {
        if !matches!(
            e.operator.as_str(),
            "In" | "NotIn" | "Exists" | "DoesNotExist"
        ) {
            return Err(s.origin.error(
                &format!("spec.podSelector.matchExpressions[{i}].operator"),
                format!("`{}`: use In, NotIn, Exists or DoesNotExist", e.operator),
            ));
        }
    }
    if let PortRef::Number(0) = s.spec.port {
        return Err(s.origin.error("spec.port", "0 is not a port"));
    }
    if let Some(p) = &s.spec.proxy_protocol
        && !matches!(
            p.as_str(),
            "unknown" | "HTTP/1" | "HTTP/2" | "gRPC" | "opaque" | "TLS"
        )
    {
        return Err(s.origin.error(
            "spec.proxyProtocol",
            format!("`{p}`: use unknown, HTTP/1, HTTP/2, gRPC, opaque or TLS"),
        ));
    }
    let access = match &s.spec.access_policy {
        Some(a) => Some(
            a.parse()
                .map_err(|e: String| s.origin.error("spec.accessPolicy", e))?,
        ),
        None => None,
    };
    Ok(ServerPolicy {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        label: PolicyRef::resource(POLICY_GROUP, "server", &s.name),
        selector,
        port: s.spec.port.clone(),
        protocol: s.spec.proxy_protocol.clone(),
        access,
    })
}

#[derive(Debug, Clone)]
struct RoutePolicy {
    namespace: String,
    name: String,
    /// How metrics name it: its group (`policy.linkerd.io` or
    /// `gateway.networking.k8s.io`, as written), `HTTPRoute`, its name.
    label: PolicyRef,
    parents: Vec<String>,
    /// Each rule's matches; a rule with none matches everything.
    rules: Vec<Vec<RouteMatch>>,
}

#[derive(Debug, Clone)]
struct RouteMatch {
    path: Option<(bool, String)>,
    method: Option<String>,
}

impl RouteMatch {
    fn matches(&self, request: &HttpRequest) -> bool {
        let path_ok = match &self.path {
            None => true,
            Some((true, exact)) => request.path == *exact,
            Some((false, prefix)) => {
                let prefix = prefix.trim_end_matches('/');
                prefix.is_empty()
                    || request.path == prefix
                    || request
                        .path
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        };
        path_ok
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&request.method))
    }
}

fn compile_route(r: &Parsed<HttpRouteSpec>) -> Result<RoutePolicy, PolicyError> {
    let mut parents = Vec::new();
    for (i, p) in r.spec.parent_refs.iter().enumerate() {
        let field = format!("spec.parentRefs[{i}]");
        check_policy_ref(&r.origin, &field, p, "Server")?;
        let name = p
            .name
            .clone()
            .ok_or_else(|| r.origin.error(&format!("{field}.name"), "missing"))?;
        parents.push(name);
    }
    if parents.is_empty() {
        return Err(r
            .origin
            .error("spec.parentRefs", "an HTTPRoute must attach to a Server"));
    }
    let mut rules = Vec::new();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let mut matches = Vec::new();
        for (j, m) in rule.matches.iter().enumerate() {
            for (present, what) in [
                (m.headers.is_some(), "headers"),
                (m.query_params.is_some(), "queryParams"),
            ] {
                if present {
                    return Err(r.origin.error(
                        &format!("spec.rules[{i}].matches[{j}].{what}"),
                        format!("Lanyard matches routes by path and method only; a {what} match would be ignored and widen the route, so it is refused"),
                    ));
                }
            }
            let field = format!("spec.rules[{i}].matches[{j}].path");
            let path = match &m.path {
                None => None,
                Some(p) => {
                    let value = p.value.clone().unwrap_or_else(|| "/".into());
                    if !value.starts_with('/') {
                        return Err(r.origin.error(
                            &format!("{field}.value"),
                            format!("`{value}` must start with `/`"),
                        ));
                    }
                    match p.kind.as_deref().unwrap_or("PathPrefix") {
                        "Exact" => Some((true, value)),
                        "PathPrefix" => Some((false, value)),
                        other => {
                            return Err(r.origin.error(
                                &format!("{field}.type"),
                                format!("`{other}`: Lanyard matches Exact and PathPrefix paths"),
                            ));
                        }
                    }
                }
            };
            matches.push(RouteMatch {
                path,
                method: m.method.clone(),
            });
        }
        rules.push(matches);
    }
    if rules.is_empty() {
        rules.push(Vec::new());
    }
    Ok(RoutePolicy {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        label: PolicyRef::resource(&r.group, "HTTPRoute", &r.name),
        parents,
        rules,
    })
}

fn is_core(group: Option<&str>) -> bool {
    matches!(group, None | Some("") | Some("core"))
}

/// The versions of `group`'s `kind` that Lanyard reads, or `None` when it
/// is not a policy kind. Linkerd serves its authentication and
/// authorization kinds only as `v1alpha1`, though guides often write
/// `v1beta1`; a refusal names these so the fix is in the message.
pub fn versions_read(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (group, kind) {
        (POLICY_GROUP, "Server") => Some(&["v1beta1", "v1beta2", "v1beta3"]),
        (
            POLICY_GROUP,
            "AuthorizationPolicy" | "MeshTLSAuthentication" | "NetworkAuthentication",
        ) => Some(&["v1alpha1"]),
        (POLICY_GROUP, "HTTPRoute") => Some(&["v1alpha1", "v1beta1", "v1beta2", "v1beta3"]),
        (GATEWAY_GROUP, "HTTPRoute") => Some(&["v1", "v1beta1"]),
        _ => None,
    }
}

/// Checks a reference to a policy kind (`Server`, `HTTPRoute`...): the
/// group must be Linkerd's (or the Gateway API's, for HTTPRoute).
fn check_policy_ref(
    origin: &Origin,
    field: &str,
    r: &ObjectRef,
    kind: &str,
) -> Result<(), PolicyError> {
    if r.kind != kind {
        return Err(origin.error(
            &format!("{field}.kind"),
            format!("`{}`: expected {kind}", r.kind),
        ));
    }
    let group = r.group.as_deref().unwrap_or("");
    let ok = group == POLICY_GROUP || (kind == "HTTPRoute" && group == GATEWAY_GROUP);
    if !ok {
        let hint = if is_core(Some(group)) {
            format!(" ({kind} is not a core kind; this mistake is common in copied examples)")
        } else {
            String::new()
        };
        return Err(origin.error(
            &format!("{field}.group"),
            format!("`{group}` is not the group of {kind}; use `{POLICY_GROUP}`{hint}"),
        ));
    }
    Ok(())
}

/// What an AuthorizationPolicy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Server(String),
    Route(String),
    Namespace,
}

#[derive(Debug, Clone)]
struct Authorization {
    namespace: String,
    name: String,
    /// How metrics name it.
    label: PolicyRef,
    target: Target,
    /// All must authenticate the client.
    required: Vec<Authn>,
}

fn compile_policy(
    p: &Parsed<AuthorizationPolicySpec>,
    authns: &BTreeMap<(String, String, &'static str), Authn>,
    servers: &[(String, String)],
    routes: &[(String, String)],
    domain: &IdentityDomain,
) -> Result<Authorization, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let t = &p.spec.target_ref;
    let target = match t.kind.as_str() {
        "Server" | "HTTPRoute" => match check_policy_ref(&p.origin, "spec.targetRef", t, &t.kind) {
            Err(e) => {
                errors.push(e);
                None
            }
            Ok(()) => match &t.name {
                None => {
                    errors.push(p.origin.error("spec.targetRef.name", "missing"));
                    None
                }
                Some(name) => {
                    let list = if t.kind == "Server" { servers } else { routes };
                    if !list.iter().any(|(ns, n)| *ns == p.namespace && n == name) {
                        errors.push(p.origin.error(
                            "spec.targetRef.name",
                            format!("{} `{}/{name}` does not exist", t.kind, p.namespace),
                        ));
                    }
                    Some(if t.kind == "Server" {
                        Target::Server(name.clone())
                    } else {
                        Target::Route(name.clone())
                    })
                }
            },
        },
        "Namespace" => {
            if !is_core(t.group.as_deref()) {
                errors.push(p.origin.error(
                    "spec.targetRef.group",
                    "a Namespace is in the core group (leave it empty)",
                ));
            }
            if t.name.as_deref().is_some_and(|n| n != p.namespace) {
                errors.push(p.origin.error(
                    "spec.targetRef.name",
                    format!(
                        "an AuthorizationPolicy can only target its own namespace `{}`",
                        p.namespace
                    ),
                ));
            }
            Some(Target::Namespace)
        }
        other => {
            errors.push(p.origin.error(
                "spec.targetRef.kind",
                format!("`{other}`: an AuthorizationPolicy targets a Server, an HTTPRoute or a Namespace"),
            ));
            None
        }
    };
    let mut required = Vec::new();
    for (i, r) in p.spec.required_authentication_refs.iter().enumerate() {
        let field = format!("spec.requiredAuthenticationRefs[{i}]");
        let ns = r.namespace.clone().unwrap_or_else(|| p.namespace.clone());
        match r.kind.as_str() {
            kind @ ("MeshTLSAuthentication" | "NetworkAuthentication") => {
                if let Err(e) = check_group(&p.origin, &field, r, kind) {
                    errors.push(e);
                    continue;
                }
                let Some(name) = &r.name else {
                    errors.push(p.origin.error(&format!("{field}.name"), "missing"));
                    continue;
                };
                let key = (
                    ns.clone(),
                    name.clone(),
                    if kind == "MeshTLSAuthentication" {
                        "MeshTLSAuthentication"
                    } else {
                        "NetworkAuthentication"
                    },
                );
                match authns.get(&key) {
                    Some(a) => required.push(a.clone()),
                    None => errors.push(p.origin.error(
                        &format!("{field}.name"),
                        format!("{kind} `{ns}/{name}` does not exist"),
                    )),
                }
            }
            "ServiceAccount" => {
                if !is_core(r.group.as_deref()) {
                    errors.push(p.origin.error(
                        &format!("{field}.group"),
                        "a ServiceAccount is in the core group (leave it empty)",
                    ));
                    continue;
                }
                let Some(name) = &r.name else {
                    errors.push(p.origin.error(&format!("{field}.name"), "missing"));
                    continue;
                };
                match Identity::new(name, &ns, domain.clone()) {
                    Ok(id) => required.push(Authn::Identities(vec![IdentityMatch::Exact(
                        id.to_string(),
                    )])),
                    Err(e) => errors.push(p.origin.error(&format!("{field}.name"), e.to_string())),
                }
            }
            other => errors.push(p.origin.error(
                &format!("{field}.kind"),
                format!(
                    "`{other}`: use MeshTLSAuthentication, NetworkAuthentication or ServiceAccount"
                ),
            )),
        }
    }
    match target {
        Some(target) if errors.is_empty() => Ok(Authorization {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            label: PolicyRef::resource(POLICY_GROUP, "authorizationpolicy", &p.name),
            target,
            required,
        }),
        _ => Err(errors),
    }
}

fn check_group(origin: &Origin, field: &str, r: &ObjectRef, kind: &str) -> Result<(), PolicyError> {
    let group = r.group.as_deref().unwrap_or("");
    if group == POLICY_GROUP {
        return Ok(());
    }
    Err(origin.error(
        &format!("{field}.group"),
        format!("`{group}` is not the group of {kind}; use `{POLICY_GROUP}`"),
    ))
}

/// A compiled, fully resolved inbound policy.
#[derive(Debug, Clone)]
pub struct Policy {
    servers: Vec<ServerPolicy>,
    routes: Vec<RoutePolicy>,
    authorizations: Vec<Authorization>,
    default: DefaultPolicy,
    cluster_networks: Vec<IpNet>,
}

/// The pod whose inbound traffic is being decided.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its named container ports.
    pub named_ports: BTreeMap<String, u16>,
    /// Its `config.linkerd.io/default-inbound-policy`, if annotated.
    pub default_policy: Option<DefaultPolicy>,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Client {
    /// The identity from its certificate's DNS SAN; `None` without mTLS.
    pub identity: Option<String>,
    /// Its address.
    pub ip: IpAddr,
}

/// An HTTP request's route-relevant parts.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The path, without the query.
    pub path: String,
    /// The method.
    pub method: String,
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Refuse: 403, gRPC 7, or a closed connection.
    Deny,
    /// The Server has routes and none matches: 404.
    NoRoute,
}

/// A decision and what made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// The Server that covered the port, if any.
    pub server: Option<String>,
    /// The AuthorizationPolicy that allowed it, or `default:<policy>`, or
    /// `<server's accessPolicy>` when none did.
    pub authz: String,
    /// The route the request matched, if any.
    pub route: Option<String>,
    /// Allowed only because the policy is `audit`: it would have been denied.
    pub audit: bool,
    /// The Server, route and authorization as Linkerd's proxy names them
    /// in its metrics.
    pub labels: PolicyLabels,
}

/// A policy object as Linkerd's proxy names it in metric labels
/// (`srv_*`, `route_*`, `authz_*`): the group, kind and name its policy
/// controller sends. Defaults Linkerd makes up (a default policy, the
/// default route) have kind `default` and an empty group.
///
/// The strings are shared: a policy names each object once, when it is
/// compiled, and every decision labels with clones of those names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    /// `policy.linkerd.io`, `gateway.networking.k8s.io`, or empty for a
    /// default.
    pub group: Arc<str>,
    /// `server`, `authorizationpolicy`, `HTTPRoute` (the route's own
    /// Kubernetes kind, as Linkerd's controller sends it) or `default`.
    pub kind: Arc<str>,
    /// The resource's name, or the default's (`all-authenticated`,
    /// `default` for the default route).
    pub name: Arc<str>,
}

impl PolicyRef {
    /// A default Linkerd makes up: a default policy or the default route.
    pub fn default_named(name: &str) -> PolicyRef {
        PolicyRef::resource("", "default", name)
    }

    fn resource(group: &str, kind: &str, name: &str) -> PolicyRef {
        PolicyRef {
            group: group.into(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    /// The route Linkerd gives a Server (or a default policy) with no
    /// HTTPRoute: `default`.
    pub fn default_route() -> PolicyRef {
        static DEFAULT_ROUTE: OnceLock<PolicyRef> = OnceLock::new();
        DEFAULT_ROUTE
            .get_or_init(|| PolicyRef::default_named("default"))
            .clone()
    }
}

/// What a decision is labelled with in Linkerd's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyLabels {
    /// The Server covering the port (kind `server`), or the default
    /// policy that did (kind `default`).
    pub server: PolicyRef,
    /// The HTTPRoute matched, or the default route.
    pub route: PolicyRef,
    /// What allowed it: an AuthorizationPolicy, or the default policy
    /// (or the Server's `accessPolicy`) that decided; `None` when denied,
    /// as Linkerd's deny counters carry no authorization.
    pub authz: Option<PolicyRef>,
}

impl Policy {
    /// The policy for `workload`'s `port`, for `client` (and `request`,
    /// for HTTP).
    pub fn authorize(
        &self,
        workload: &Workload,
        port: u16,
        client: &Client,
        request: Option<&HttpRequest>,
    ) -> Decision {
        match self.server_for(workload, port) {
            Some(server) => self.decide_on(server, client, request),
            None => {
                let default = workload.default_policy.unwrap_or(self.default);
                self.default_decision(default, None, client)
            }
        }
    }

    fn server_for(&self, workload: &Workload, port: u16) -> Option<&ServerPolicy> {
        self.servers.iter().find(|s| {
            s.namespace == workload.namespace
                && selects(&s.selector, &workload.labels)
                && match &s.port {
                    PortRef::Number(n) => *n == port,
                    PortRef::Name(name) => workload.named_ports.get(name) == Some(&port),
                }
        })
    }

    /// The Server covering `workload`'s `port` as Linkerd labels it, or
    /// the default policy that covers it.
    pub fn server_ref(&self, workload: &Workload, port: u16) -> PolicyRef {
        match self.server_for(workload, port) {
            Some(server) => server.label.clone(),
            None => workload.default_policy.unwrap_or(self.default).label(),
        }
    }

    /// The `proxyProtocol` of the Server covering `workload`'s `port`, if
    /// one does and says.
    pub fn server_protocol(&self, workload: &Workload, port: u16) -> Option<&str> {
        self.server_for(workload, port)?.protocol.as_deref()
    }

    /// The decision for the Server `namespace/name`, as `lanyard policy
    /// test` asks it; `None` when there is no such Server.
    pub fn authorize_server(
        &self,
        namespace: &str,
        name: &str,
        client: &Client,
        request: Option<&HttpRequest>,
    ) -> Option<Decision> {
        let server = self
            .servers
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)?;
        Some(self.decide_on(server, client, request))
    }

    fn decide_on(
        &self,
        server: &ServerPolicy,
        client: &Client,
        request: Option<&HttpRequest>,
    ) -> Decision {
        let routes: Vec<&RoutePolicy> = self
            .routes
            .iter()
            .filter(|r| r.namespace == server.namespace && r.parents.contains(&server.name))
            .collect();
        let mut route = None;
        if let Some(request) = request
            && !routes.is_empty()
        {
            route = routes.iter().find(|r| {
                r.rules
                    .iter()
                    .any(|rule| rule.is_empty() || rule.iter().any(|m| m.matches(request)))
            });
            if route.is_none() {
                return Decision {
                    verdict: Verdict::NoRoute,
                    server: Some(server.name.clone()),
                    authz: String::new(),
                    route: None,
                    audit: false,
                    labels: PolicyLabels {
                        server: server.label.clone(),
                        route: PolicyRef::default_route(),
                        authz: None,
                    },
                };
            }
        }
        let applies = |a: &&Authorization| {
            a.namespace == server.namespace
                && match &a.target {
                    Target::Server(name) => *name == server.name,
                    Target::Namespace => true,
                    Target::Route(name) => route.is_some_and(|r| r.name == *name),
                }
        };
        let allowed = self
            .authorizations
            .iter()
            .filter(applies)
            .find(|a| a.required.iter().all(|authn| authenticates(authn, client)));
        let route_name = route.map(|r| r.name.clone());
        let route_ref = route.map_or_else(PolicyRef::default_route, |r| r.label.clone());
        match allowed {
            Some(a) => Decision {
                verdict: Verdict::Allow,
                server: Some(server.name.clone()),
                authz: a.name.clone(),
                route: route_name,
                audit: false,
                labels: PolicyLabels {
                    server: server.label.clone(),
                    route: route_ref,
                    authz: Some(a.label.clone()),
                },
            },
            None => {
                let mut d = self.default_decision(
                    server.access.unwrap_or(DefaultPolicy::Deny),
                    Some(server),
                    client,
                );
                d.route = route_name;
                d.labels.route = route_ref;
                d
            }
        }
    }

    fn default_decision(
        &self,
        policy: DefaultPolicy,
        server: Option<&ServerPolicy>,
        client: &Client,
    ) -> Decision {
        let in_cluster = || self.cluster_networks.iter().any(|n| n.contains(&client.ip));
        let meshed = client.identity.is_some();
        let (allow, audit) = match policy {
            DefaultPolicy::AllUnauthenticated => (true, false),
            DefaultPolicy::AllAuthenticated => (meshed, false),
            DefaultPolicy::ClusterAuthenticated => (meshed && in_cluster(), false),
            DefaultPolicy::ClusterUnauthenticated => (in_cluster(), false),
            DefaultPolicy::Deny => (false, false),
            DefaultPolicy::Audit => (true, true),
        };
        let labels = PolicyLabels {
            server: server.map_or_else(|| policy.label(), |s| s.label.clone()),
            route: PolicyRef::default_route(),
            authz: allow.then(|| policy.label()),
        };
        Decision {
            verdict: if allow { Verdict::Allow } else { Verdict::Deny },
            server: server.map(|s| s.name.clone()),
            authz: format!("default:{policy}"),
            route: None,
            audit,
            labels,
        }
    }
}

fn authenticates(authn: &Authn, client: &Client) -> bool {
    match authn {
        Authn::Identities(matches) => client
            .identity
            .as_deref()
            .is_some_and(|id| matches.iter().any(|m| m.matches(id))),
        Authn::Networks(networks) => networks.iter().any(|(net, except)| {
            net.contains(&client.ip) && !except.iter().any(|e| e.contains(&client.ip))
        }),
    }
}

fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().all(|e| {
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| e.values.contains(v)),
                "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Keeps a policy current from a directory of manifests: a changed
/// directory is rebuilt and swapped in; one that does not build is refused
/// and the last good policy stays.
#[derive(Debug)]
pub struct PolicyDir {
    dir: PathBuf,
    options: PolicyOptions,
    seen: Option<Vec<(PathBuf, Vec<u8>)>>,
}

/// What one look at the policy directory found.
#[derive(Debug)]
pub enum PolicyReload {
    /// Nothing changed.
    Unchanged,
    /// A new policy.
    Loaded(Policy),
    /// The manifests are wrong; keep the last good policy.
    Refused(PolicyErrors),
}

impl PolicyDir {
    /// A directory of manifests built with `options`.
    pub fn new(dir: impl Into<PathBuf>, options: PolicyOptions) -> Self {
        PolicyDir {
            dir: dir.into(),
            options,
            seen: None,
        }
    }

    /// Reads the directory; rebuilds when any file changed.
    pub fn poll(&mut self) -> PolicyReload {
        let files = match read_manifest_files(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                return PolicyReload::Refused(PolicyErrors(vec![PolicyError {
                    file: self.dir.clone(),
                    document: 0,
                    object: None,
                    field: None,
                    message: e.to_string(),
                }]));
            }
        };
        if self.seen.as_ref() == Some(&files) {
            return PolicyReload::Unchanged;
        }
        let mut manifests = Manifests::new();
        for (path, bytes) in &files {
            manifests.add_yaml(path, &String::from_utf8_lossy(bytes));
        }
        self.seen = Some(files);
        match manifests.build(&self.options) {
            Ok(policy) => PolicyReload::Loaded(policy),
            Err(errors) => PolicyReload::Refused(errors),
        }
    }
}

fn read_manifest_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| std::fs::read(&path).map(|bytes| (path, bytes)))
        .collect()
}

impl Policy {
    /// The policy with no manifests: every port gets `options`' default.
    pub fn empty(options: &PolicyOptions) -> Policy {
        Manifests::new()
            .build(options)
            .expect("an empty set of manifests builds")
    }
}
