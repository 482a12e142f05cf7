//! Resolving the parsed manifests into a [`Policy`]: every reference is
//! looked up and every field checked, and all errors are reported together.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use lanyard_crds::identity::{Identity, IdentityDomain};

use crate::load::{Origin, Parsed};
use crate::manifest::{
    AuthorizationPolicySpec, GATEWAY_GROUP, HttpRouteSpec, LabelSelector,
    MeshTlsAuthenticationSpec, NetworkAuthenticationSpec, ObjectRef, POLICY_GROUP, PortRef,
    ServerSpec,
};
use crate::{
    DefaultPolicy, Manifests, Policy, PolicyError, PolicyErrors, PolicyOptions, PolicyRef,
};

impl Manifests {
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

impl Policy {
    /// The policy with no manifests: every port gets `options`' default.
    pub fn empty(options: &PolicyOptions) -> Policy {
        Manifests::new()
            .build(options)
            .expect("an empty set of manifests builds")
    }
}

// The compiled rules below are what `eval` reads; their `matches` are there.

/// One way a client can be authenticated.
#[derive(Debug, Clone)]
pub(crate) enum Authn {
    Identities(Vec<IdentityMatch>),
    Networks(Vec<(IpNet, Vec<IpNet>)>),
}

/// One entry of a MeshTLSAuthentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdentityMatch {
    /// `*`: any meshed client.
    Any,
    /// An exact identity name.
    Exact(String),
    /// `*.<suffix>`: any identity ending in `.<suffix>`.
    Suffix(String),
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
pub(crate) struct ServerPolicy {
    pub(crate) namespace: String,
    pub(crate) name: Arc<str>,
    /// How metrics name it.
    pub(crate) label: PolicyRef,
    pub(crate) selector: LabelSelector,
    pub(crate) port: PortRef,
    pub(crate) protocol: Option<String>,
    pub(crate) access: Option<DefaultPolicy>,
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
        name: s.name.as_str().into(),
        label: PolicyRef::resource(POLICY_GROUP, "server", &s.name),
        selector,
        port: s.spec.port.clone(),
        protocol: s.spec.proxy_protocol.clone(),
        access,
    })
}

#[derive(Debug, Clone)]
pub(crate) struct RoutePolicy {
    pub(crate) namespace: String,
    pub(crate) name: Arc<str>,
    /// How metrics name it: its group (`policy.linkerd.io` or
    /// `gateway.networking.k8s.io`, as written), `HTTPRoute`, its name.
    pub(crate) label: PolicyRef,
    pub(crate) parents: Vec<String>,
    /// Each rule's matches; a rule with none matches everything.
    pub(crate) rules: Vec<Vec<RouteMatch>>,
}

#[derive(Debug, Clone)]
pub(crate) struct RouteMatch {
    pub(crate) path: Option<(bool, String)>,
    pub(crate) method: Option<String>,
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
        name: r.name.as_str().into(),
        label: PolicyRef::resource(&r.group, "HTTPRoute", &r.name),
        parents,
        rules,
    })
}

fn is_core(group: Option<&str>) -> bool {
    matches!(group, None | Some("") | Some("core"))
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
pub(crate) enum Target {
    Server(String),
    Route(String),
    Namespace,
}

#[derive(Debug, Clone)]
pub(crate) struct Authorization {
    pub(crate) namespace: String,
    pub(crate) name: Arc<str>,
    /// How metrics name it.
    pub(crate) label: PolicyRef,
    pub(crate) target: Target,
    /// All must authenticate the client.
    pub(crate) required: Vec<Authn>,
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
            name: p.name.as_str().into(),
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
