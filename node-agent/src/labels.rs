//! The Docker labels that make a container Warmpool's, and their parsing.
//!
//! Labels are the agent's only persistent memory: everything needed to re-adopt a container
//! after a restart (id, pool, generation, health check, port) is written on it at creation.

use std::collections::HashMap;

use warmpool_proto::agent::CreateSpec;
use warmpool_proto::{
    ContainerId, Egress, HealthCheck, NodeId, PoolName, LABEL_EGRESS, LABEL_GENERATION,
    LABEL_HEALTH, LABEL_ID, LABEL_NODE, LABEL_POOL, LABEL_PORT, LABEL_PORTS,
};

/// What the labels of one container say.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerLabels {
    /// `io.warmpool.id`.
    pub id: ContainerId,
    /// `io.warmpool.pool`.
    pub pool: PoolName,
    /// `io.warmpool.generation`.
    pub generation: u64,
    /// `io.warmpool.health`, JSON.
    pub health: HealthCheck,
    /// `io.warmpool.port`.
    pub port: u16,
}

/// Why a labelled container cannot be managed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label {label}: {reason}")]
pub struct LabelError {
    /// The offending label.
    pub label: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// The labels to put on the container made from `spec` on `node`.
pub fn for_spec(node: &NodeId, spec: &CreateSpec) -> HashMap<String, String> {
    let health = serde_json::to_string(&spec.health).unwrap_or_else(|_| "{}".to_string());
    // Serialising an enum of strings and numbers cannot fail; should it, "none" is the
    // closed policy.
    let egress = serde_json::to_string(&spec.egress).unwrap_or_else(|_| "\"none\"".to_string());
    let mut labels = HashMap::from([
        (LABEL_NODE.to_string(), node.to_string()),
        (LABEL_ID.to_string(), spec.id.to_string()),
        (LABEL_POOL.to_string(), spec.pool.to_string()),
        (LABEL_GENERATION.to_string(), spec.generation.to_string()),
        (LABEL_HEALTH.to_string(), health),
        (LABEL_PORT.to_string(), spec.port.to_string()),
        (LABEL_EGRESS.to_string(), egress),
    ]);
    if spec.stop_grace_secs > 0 {
        labels.insert(
            warmpool_proto::LABEL_STOP_GRACE.to_string(),
            spec.stop_grace_secs.to_string(),
        );
    }
    if !spec.pre_stop.is_empty() {
        if let Ok(cmd) = serde_json::to_string(&spec.pre_stop) {
            labels.insert(warmpool_proto::LABEL_PRE_STOP.to_string(), cmd);
        }
    }
    if !spec.extra_ports.is_empty() {
        let ports: Vec<String> = spec.extra_ports.iter().map(u16::to_string).collect();
        labels.insert(LABEL_PORTS.to_string(), ports.join(","));
    }
    labels
}

/// How a container asked to be stopped: its grace and pre-stop command (labels written at
/// create; absent or unreadable: none, removed at once as before).
pub fn stop_of(labels: &HashMap<String, String>) -> (u32, Vec<String>) {
    let grace = labels
        .get(warmpool_proto::LABEL_STOP_GRACE)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
        .min(300);
    let pre_stop = labels
        .get(warmpool_proto::LABEL_PRE_STOP)
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or_default();
    (grace, pre_stop)
}

/// The named ports besides the service port a container was made with (opened to the
/// gateway like it). A malformed entry is left out: that port stays closed.
pub fn extra_ports_of(labels: &HashMap<String, String>) -> Vec<u16> {
    labels
        .get(LABEL_PORTS)
        .map(|raw| {
            raw.split(',')
                .filter_map(|p| p.trim().parse::<u16>().ok())
                .filter(|p| *p != 0)
                .collect()
        })
        .unwrap_or_default()
}

/// The egress policy a container was made with. A container without the label was made
/// before egress policies existed: it gets none, like a pool that names none.
pub fn egress_of(labels: &HashMap<String, String>) -> Result<Egress, LabelError> {
    match labels.get(LABEL_EGRESS) {
        None => Ok(Egress::None),
        Some(raw) => serde_json::from_str(raw).map_err(|e| LabelError {
            label: LABEL_EGRESS,
            reason: e.to_string(),
        }),
    }
}

/// The Warmpool id alone, for deciding about duplicates before the rest is parsed.
pub fn id_of(labels: &HashMap<String, String>) -> Result<ContainerId, LabelError> {
    let raw = get(labels, LABEL_ID)?;
    raw.parse()
        .map_err(|e: warmpool_proto::ids::IdError| LabelError {
            label: LABEL_ID,
            reason: e.to_string(),
        })
}

/// Parses every Warmpool label. Any missing or malformed one makes the container unmanageable:
/// without its pool it cannot be reported, without its health check it cannot be probed.
pub fn parse(labels: &HashMap<String, String>) -> Result<ContainerLabels, LabelError> {
    let id = id_of(labels)?;
    let pool = PoolName::new(get(labels, LABEL_POOL)?).map_err(|e| LabelError {
        label: LABEL_POOL,
        reason: e.to_string(),
    })?;
    let generation =
        get(labels, LABEL_GENERATION)?
            .parse()
            .map_err(|e: std::num::ParseIntError| LabelError {
                label: LABEL_GENERATION,
                reason: e.to_string(),
            })?;
    let health = serde_json::from_str(get(labels, LABEL_HEALTH)?).map_err(|e| LabelError {
        label: LABEL_HEALTH,
        reason: e.to_string(),
    })?;
    let port: u16 = get(labels, LABEL_PORT)?
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| LabelError {
            label: LABEL_PORT,
            reason: "not a port number".into(),
        })?;
    Ok(ContainerLabels {
        id,
        pool,
        generation,
        health,
        port,
    })
}

fn get<'a>(
    labels: &'a HashMap<String, String>,
    label: &'static str,
) -> Result<&'a str, LabelError> {
    labels.get(label).map(String::as_str).ok_or(LabelError {
        label,
        reason: "missing".into(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warmpool_proto::pool::ContainerResources;
    use warmpool_proto::HealthProbe;

    use super::*;

    fn spec() -> CreateSpec {
        CreateSpec {
            id: ContainerId::new(),
            pool: PoolName::new("demo").unwrap(),
            generation: 7,
            image: "warmpool-demo:latest".into(),
            pull: Default::default(),
            command: vec![],
            env: BTreeMap::new(),
            port: 8080,
            extra_ports: Vec::new(),
            resources: ContainerResources::default(),
            health: HealthCheck {
                probe: HealthProbe::Http {
                    path: "/healthz".into(),
                },
                ..HealthCheck::default()
            },
            security: Default::default(),
            egress: Default::default(),
            stop_grace_secs: 0,
            pre_stop: vec![],
            workspace_path: None,
        }
    }

    #[test]
    fn labels_round_trip() {
        let s = spec();
        let node = NodeId::new("n1").unwrap();
        let labels = for_spec(&node, &s);
        assert_eq!(labels[LABEL_NODE], "n1");
        let parsed = parse(&labels).unwrap();
        assert_eq!(
            parsed,
            ContainerLabels {
                id: s.id,
                pool: s.pool,
                generation: 7,
                health: s.health,
                port: 8080
            }
        );
    }

    #[test]
    fn the_egress_policy_rides_on_a_label_and_defaults_to_none() {
        let mut s = spec();
        s.egress = Egress::Internet;
        let mut labels = for_spec(&NodeId::new("n1").unwrap(), &s);
        assert_eq!(labels[LABEL_EGRESS], "\"internet\"");
        assert_eq!(egress_of(&labels).unwrap(), Egress::Internet);
        labels.remove(LABEL_EGRESS);
        assert_eq!(
            egress_of(&labels).unwrap(),
            Egress::None,
            "made by an older agent"
        );
        labels.insert(LABEL_EGRESS.into(), "\"everything\"".into());
        assert!(egress_of(&labels).is_err());
    }

    #[test]
    fn garbage_is_an_error_naming_the_label() {
        let node = NodeId::new("n1").unwrap();
        let good = for_spec(&node, &spec());
        let cases = [
            (LABEL_ID, Some("not-a-uuid")),
            (LABEL_ID, None),
            (LABEL_POOL, Some("Bad Pool")),
            (LABEL_GENERATION, Some("-1")),
            (LABEL_HEALTH, Some("{\"probe\":")),
            (LABEL_PORT, Some("0")),
            (LABEL_PORT, Some("99999")),
        ];
        for (label, value) in cases {
            let mut l = good.clone();
            match value {
                Some(v) => l.insert(label.to_string(), v.to_string()),
                None => l.remove(label),
            };
            let err = parse(&l).unwrap_err();
            assert_eq!(err.label, label, "{value:?}");
        }
        let mut l = good;
        l.insert(LABEL_ID.into(), "x".into());
        assert!(id_of(&l).is_err());
    }
}
