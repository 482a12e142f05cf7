//! Answering "may this client reach this port (and route)?" from a
//! compiled [`Policy`], and naming the answer as Linkerd's metrics do.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use ipnet::IpNet;

use crate::DefaultPolicy;
use crate::compile::{
    Authn, Authorization, IdentityMatch, RouteMatch, RoutePolicy, ServerPolicy, Target,
};
use crate::manifest::{LabelSelector, PortRef};

/// A compiled, fully resolved inbound policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) servers: Vec<ServerPolicy>,
    pub(crate) routes: Vec<RoutePolicy>,
    pub(crate) authorizations: Vec<Authorization>,
    pub(crate) default: DefaultPolicy,
    pub(crate) cluster_networks: Vec<IpNet>,
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

/// An HTTP request's route-relevant parts, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The path, without the query.
    pub path: &'a str,
    /// The method.
    pub method: &'a str,
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
    pub server: Option<Arc<str>>,
    /// The AuthorizationPolicy that allowed it, or `default:<policy>`, or
    /// `<server's accessPolicy>` when none did.
    pub authz: Arc<str>,
    /// The route the request matched, if any.
    pub route: Option<Arc<str>>,
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

    pub(crate) fn resource(group: &str, kind: &str, name: &str) -> PolicyRef {
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
        request: Option<&HttpRequest<'_>>,
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
        request: Option<&HttpRequest<'_>>,
    ) -> Option<Decision> {
        let server = self
            .servers
            .iter()
            .find(|s| s.namespace == namespace && *s.name == *name)?;
        Some(self.decide_on(server, client, request))
    }

    fn decide_on(
        &self,
        server: &ServerPolicy,
        client: &Client,
        request: Option<&HttpRequest<'_>>,
    ) -> Decision {
        let routes: Vec<&RoutePolicy> = self
            .routes
            .iter()
            .filter(|r| {
                r.namespace == server.namespace && r.parents.iter().any(|p| **p == *server.name)
            })
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
                    authz: "".into(),
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
                    Target::Server(name) => **name == *server.name,
                    Target::Namespace => true,
                    Target::Route(name) => route.is_some_and(|r| *r.name == **name),
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
            authz: policy.authz(),
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

impl RouteMatch {
    fn matches(&self, request: &HttpRequest<'_>) -> bool {
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
                .is_none_or(|m| m.eq_ignore_ascii_case(request.method))
    }
}
