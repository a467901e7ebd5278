//! Pool specs from flags and files: `pool create` builds one, `pool update` merges onto the
//! current one. Pure functions, except for reading the file.

use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use warmpool_proto::{Egress, HealthProbe, PoolName, PoolSpec};

use crate::args::{EgressMode, SpecFlags};

/// A value for an optional spec field: set it, or clear it with `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting<T> {
    /// Set to this value.
    Set(T),
    /// Unset (the field's `None`).
    Clear,
}

impl<T: FromStr> FromStr for Setting<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(Setting::Clear);
        }
        s.parse()
            .map(Setting::Set)
            .map_err(|e| format!("{e} (or `none`)"))
    }
}

impl<T: Copy> Setting<T> {
    fn apply(self, field: &mut Option<T>) {
        *field = match self {
            Setting::Set(v) => Some(v),
            Setting::Clear => None,
        };
    }
}

/// Parses `KEY=VALUE`: the key is everything before the first `=` and must be non-empty
/// with no whitespace; the value is the rest, and may be empty or hold `=`.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got {s:?}"));
    };
    if key.is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    if key.chars().any(char::is_whitespace) {
        return Err(format!("key {key:?} holds whitespace"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// A spec from JSON: a bare `PoolSpec`, or anything with a `spec` object in it (the output of
/// `pool show -o json`). `origin` names the source in errors.
pub fn parse_spec_json(bytes: &[u8], origin: &str) -> Result<PoolSpec, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("{origin}: not JSON: {e}"))?;
    let spec_value = match value.get("spec") {
        Some(spec) if spec.is_object() => spec.clone(),
        _ => value,
    };
    serde_json::from_value(spec_value).map_err(|e| format!("{origin}: not a pool spec: {e}"))
}

/// Reads a spec file (`-`: standard input).
pub fn read_spec_file(path: &Path) -> Result<PoolSpec, String> {
    let origin = path.display().to_string();
    let mut bytes = Vec::new();
    let read = if origin == "-" {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes).map(|_| ()))
    };
    read.map_err(|e| format!("cannot read {origin}: {e}"))?;
    parse_spec_json(&bytes, &origin)
}

/// Applies every flag that was given to `spec`; the rest stays as it is.
pub fn apply_flags(spec: &mut PoolSpec, f: &SpecFlags) {
    if let Some(image) = &f.image {
        spec.image = image.clone();
    }
    if !f.command.is_empty() {
        spec.command = f.command.clone();
    }
    if let Some(v) = f.port {
        spec.port = v;
    }
    for (k, v) in &f.env {
        spec.env.insert(k.clone(), v.clone());
    }
    if let Some(v) = f.cpu_millis {
        spec.resources.cpu_millis = v;
    }
    if let Some(v) = f.memory_mb {
        spec.resources.memory_mb = v;
    }
    if let Some(v) = f.pids {
        spec.resources.pids = v;
    }
    if let Some(v) = f.min_warm {
        spec.min_warm = v;
    }
    if let Some(s) = f.max_warm {
        s.apply(&mut spec.max_warm);
    }
    if let Some(v) = f.max_total {
        spec.max_total = v;
    }
    if let Some(path) = &f.health_path {
        spec.health.probe = HealthProbe::Http { path: path.clone() };
    }
    if f.health_tcp {
        spec.health.probe = HealthProbe::Tcp;
    }
    if let Some(v) = f.health_interval_ms {
        spec.health.interval_ms = v;
    }
    if let Some(v) = f.health_timeout_ms {
        spec.health.timeout_ms = v;
    }
    if let Some(v) = f.health_failures {
        spec.health.failure_threshold = v;
    }
    if let Some(v) = f.lease_seconds {
        spec.lease_seconds = v;
    }
    if let Some(s) = f.idle_timeout_secs {
        s.apply(&mut spec.idle_timeout_secs);
    }
    if let Some(s) = f.max_lifetime_secs {
        s.apply(&mut spec.max_lifetime_secs);
    }
    for (k, v) in &f.constraints {
        spec.constraints.insert(k.clone(), v.clone());
    }
    if let Some(v) = f.batch_size {
        spec.scaling.batch_size = v;
    }
    if let Some(v) = f.pacing_ms {
        spec.scaling.pacing_ms = v;
    }
    match f.egress {
        Some(EgressMode::None) => spec.egress = Egress::None,
        Some(EgressMode::Internet) => spec.egress = Egress::Internet,
        None if !f.egress_allow.is_empty() => spec.egress = Egress::Allow(f.egress_allow.clone()),
        None => {}
    }
}

/// True when any spec flag (other than `--file`) was given.
pub fn has_changes(f: &SpecFlags) -> bool {
    f.image.is_some()
        || !f.command.is_empty()
        || f.port.is_some()
        || !f.env.is_empty()
        || f.cpu_millis.is_some()
        || f.memory_mb.is_some()
        || f.pids.is_some()
        || f.min_warm.is_some()
        || f.max_warm.is_some()
        || f.max_total.is_some()
        || f.health_path.is_some()
        || f.health_tcp
        || f.health_interval_ms.is_some()
        || f.health_timeout_ms.is_some()
        || f.health_failures.is_some()
        || f.lease_seconds.is_some()
        || f.idle_timeout_secs.is_some()
        || f.max_lifetime_secs.is_some()
        || !f.constraints.is_empty()
        || f.batch_size.is_some()
        || f.pacing_ms.is_some()
        || f.egress.is_some()
        || !f.egress_allow.is_empty()
}

/// The spec `pool create` sends: the file's spec (when `file` is given) or the defaults for
/// `--image`, with the flags on top, validated.
pub fn spec_for_create(
    name: Option<&PoolName>,
    flags: &SpecFlags,
    file: Option<PoolSpec>,
) -> Result<PoolSpec, String> {
    let mut spec = match (file, name) {
        (Some(spec), Some(name)) if spec.name != *name => {
            return Err(format!(
                "the pool is named {name:?} on the command line but {:?} in the file",
                spec.name.as_str()
            ))
        }
        (Some(spec), _) => spec,
        (None, Some(name)) => match &flags.image {
            Some(image) => PoolSpec::new(name.clone(), image.clone()),
            None => return Err("pool create needs --image (or --file)".into()),
        },
        (None, None) => return Err("pool create needs a name (or --file)".into()),
    };
    apply_flags(&mut spec, flags);
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}

/// The spec `pool update` sends: `current` (or the file's spec, which replaces it), with the
/// flags and removals on top, validated. Asking for no change at all is an error.
pub fn spec_for_update(
    name: &PoolName,
    current: PoolSpec,
    flags: &SpecFlags,
    file: Option<PoolSpec>,
    unset_env: &[String],
    unset_constraint: &[String],
) -> Result<PoolSpec, String> {
    if file.is_none() && !has_changes(flags) && unset_env.is_empty() && unset_constraint.is_empty()
    {
        return Err("nothing to change: give a flag such as --min-warm, or --file".into());
    }
    let mut spec = match file {
        Some(spec) if spec.name != *name => {
            return Err(format!(
                "cannot update pool {:?} with a spec named {:?}",
                name.as_str(),
                spec.name.as_str()
            ))
        }
        Some(spec) => spec,
        None => current,
    };
    for k in unset_env {
        if spec.env.remove(k).is_none() {
            return Err(format!("--unset-env {k}: the pool has no such variable"));
        }
    }
    for k in unset_constraint {
        if spec.constraints.remove(k).is_none() {
            return Err(format!(
                "--unset-constraint {k}: the pool has no such constraint"
            ));
        }
    }
    apply_flags(&mut spec, flags);
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn demo() -> PoolName {
        PoolName::new("demo").unwrap()
    }

    fn image(img: &str) -> SpecFlags {
        SpecFlags {
            image: Some(img.into()),
            ..Default::default()
        }
    }

    #[test]
    fn kv_parsing_and_its_errors() {
        assert_eq!(parse_kv("A=1"), Ok(("A".into(), "1".into())));
        assert_eq!(parse_kv("A="), Ok(("A".into(), "".into())));
        assert_eq!(
            parse_kv("URL=http://x/?a=b"),
            Ok(("URL".into(), "http://x/?a=b".into()))
        );
        assert_eq!(parse_kv("A"), Err("expected KEY=VALUE, got \"A\"".into()));
        assert_eq!(parse_kv("=1"), Err("empty key in \"=1\"".into()));
        assert!(parse_kv("A B=1").unwrap_err().contains("whitespace"));
    }

    #[test]
    fn setting_parses_numbers_and_none() {
        assert_eq!("30".parse::<Setting<u64>>(), Ok(Setting::Set(30)));
        assert_eq!("none".parse::<Setting<u64>>(), Ok(Setting::Clear));
        assert!("-1"
            .parse::<Setting<u64>>()
            .unwrap_err()
            .contains("or `none`"));
    }

    #[test]
    fn egress_flags_set_the_policy() {
        let mut spec = PoolSpec::new(demo(), "img:1");
        assert_eq!(spec.egress, Egress::None, "the default");
        let flags = SpecFlags {
            egress: Some(EgressMode::Internet),
            ..Default::default()
        };
        assert!(has_changes(&flags));
        apply_flags(&mut spec, &flags);
        assert_eq!(spec.egress, Egress::Internet);
        let flags = SpecFlags {
            egress_allow: vec!["2001:db8::/48:443".parse().unwrap()],
            ..Default::default()
        };
        apply_flags(&mut spec, &flags);
        assert_eq!(spec.egress.to_string(), "allow 2001:db8::/48:443");
        // Other flags leave the policy alone.
        apply_flags(&mut spec, &image("img:2"));
        assert_eq!(spec.egress.to_string(), "allow 2001:db8::/48:443");
    }

    #[test]
    fn create_from_flags_only_changes_what_was_given() {
        let spec = spec_for_create(Some(&demo()), &image("img:1"), None).unwrap();
        assert_eq!(spec, PoolSpec::new(demo(), "img:1"));

        let flags = SpecFlags {
            image: Some("img:2".into()),
            min_warm: Some(2),
            max_warm: Some(Setting::Set(5)),
            max_total: Some(20),
            port: Some(9000),
            cpu_millis: Some(250),
            memory_mb: Some(64),
            env: vec![("A".into(), "1".into()), ("A".into(), "2".into())],
            constraints: vec![("region".into(), "eu".into())],
            health_path: Some("/healthz".into()),
            lease_seconds: Some(60),
            idle_timeout_secs: Some(Setting::Set(30)),
            max_lifetime_secs: Some(Setting::Set(3600)),
            command: vec!["/bin/httpd".into(), "-f".into()],
            ..Default::default()
        };
        let spec = spec_for_create(Some(&demo()), &flags, None).unwrap();
        assert_eq!(spec.image, "img:2");
        assert_eq!(
            (spec.min_warm, spec.max_warm, spec.max_total),
            (2, Some(5), 20)
        );
        assert_eq!(spec.port, 9000);
        assert_eq!(
            (spec.resources.cpu_millis, spec.resources.memory_mb),
            (250, 64)
        );
        assert_eq!(
            spec.env,
            BTreeMap::from([("A".to_string(), "2".to_string())]),
            "last wins"
        );
        assert_eq!(spec.constraints["region"], "eu");
        assert_eq!(
            spec.health.probe,
            HealthProbe::Http {
                path: "/healthz".into()
            }
        );
        assert_eq!(spec.lease_seconds, 60);
        assert_eq!(
            (spec.idle_timeout_secs, spec.max_lifetime_secs),
            (Some(30), Some(3600))
        );
        assert_eq!(spec.command, vec!["/bin/httpd", "-f"]);
        // Untouched fields keep their defaults.
        assert_eq!(spec.scaling, PoolSpec::new(demo(), "x").scaling);
    }

    #[test]
    fn create_needs_an_image_and_a_valid_spec() {
        let err = spec_for_create(Some(&demo()), &SpecFlags::default(), None).unwrap_err();
        assert!(err.contains("--image"), "{err}");
        let flags = SpecFlags {
            min_warm: Some(5),
            max_warm: Some(Setting::Set(2)),
            ..image("i")
        };
        let err = spec_for_create(Some(&demo()), &flags, None).unwrap_err();
        assert!(
            err.starts_with("invalid pool spec: max_warm (2) is below min_warm (5)"),
            "{err}"
        );
        let flags = SpecFlags {
            health_path: Some("healthz".into()),
            ..image("i")
        };
        assert!(spec_for_create(Some(&demo()), &flags, None).is_err());
    }

    #[test]
    fn create_from_a_file_with_flags_on_top() {
        let file =
            parse_spec_json(br#"{"name":"demo","image":"a","min_warm":1}"#, "f.json").unwrap();
        let flags = SpecFlags {
            min_warm: Some(3),
            ..Default::default()
        };
        let spec = spec_for_create(None, &flags, Some(file.clone())).unwrap();
        assert_eq!((spec.image.as_str(), spec.min_warm), ("a", 3));
        let other = PoolName::new("other").unwrap();
        let err = spec_for_create(Some(&other), &flags, Some(file)).unwrap_err();
        assert!(
            err.contains("\"other\"") && err.contains("\"demo\""),
            "{err}"
        );
    }

    #[test]
    fn spec_files_strict_but_accept_pool_show_output() {
        let err =
            parse_spec_json(br#"{"name":"demo","image":"a","min_wram":1}"#, "f.json").unwrap_err();
        assert!(
            err.starts_with("f.json: not a pool spec:") && err.contains("min_wram"),
            "{err}"
        );
        let err = parse_spec_json(b"{\"name\":", "f.json").unwrap_err();
        assert!(err.starts_with("f.json: not JSON:"), "{err}");
        let shown = br#"{"spec":{"name":"demo","image":"a"},"generation":4,"counts":{}}"#;
        assert_eq!(
            parse_spec_json(shown, "f").unwrap(),
            PoolSpec::new(demo(), "a")
        );
    }

    #[test]
    fn update_merges_onto_the_current_spec() {
        let mut current = PoolSpec::new(demo(), "img:1");
        current.min_warm = 2;
        current.max_warm = Some(4);
        current.idle_timeout_secs = Some(30);
        current.env.insert("KEEP".into(), "1".into());
        current.env.insert("DROP".into(), "1".into());
        current.constraints.insert("region".into(), "eu".into());
        current.command = vec!["serve".into()];

        let flags = SpecFlags {
            max_warm: Some(Setting::Set(6)),
            idle_timeout_secs: Some(Setting::Clear),
            env: vec![("NEW".into(), "x".into())],
            ..Default::default()
        };
        let spec = spec_for_update(
            &demo(),
            current.clone(),
            &flags,
            None,
            &["DROP".into()],
            &[],
        )
        .unwrap();
        assert_eq!(spec.max_warm, Some(6));
        assert_eq!(spec.idle_timeout_secs, None);
        assert_eq!(spec.min_warm, 2, "not given, kept");
        assert_eq!(spec.image, "img:1");
        assert_eq!(
            spec.command,
            vec!["serve"],
            "no trailing command keeps the current one"
        );
        assert_eq!(spec.constraints["region"], "eu");
        assert_eq!(
            spec.env,
            BTreeMap::from([
                ("KEEP".to_string(), "1".to_string()),
                ("NEW".to_string(), "x".to_string())
            ])
        );
    }

    #[test]
    fn update_errors() {
        let current = PoolSpec::new(demo(), "img:1");
        let none = SpecFlags::default();
        let err = spec_for_update(&demo(), current.clone(), &none, None, &[], &[]).unwrap_err();
        assert!(err.starts_with("nothing to change"), "{err}");
        let err =
            spec_for_update(&demo(), current.clone(), &none, None, &["X".into()], &[]).unwrap_err();
        assert!(err.contains("no such variable"), "{err}");
        let other = PoolSpec::new(PoolName::new("other").unwrap(), "i");
        assert!(spec_for_update(&demo(), current.clone(), &none, Some(other), &[], &[]).is_err());
        let shrink = SpecFlags {
            max_total: Some(0),
            min_warm: Some(1),
            ..Default::default()
        };
        assert!(spec_for_update(&demo(), current, &shrink, None, &[], &[])
            .unwrap_err()
            .starts_with("invalid pool spec"));
    }

    #[test]
    fn update_with_a_file_replaces_then_applies_flags() {
        let mut current = PoolSpec::new(demo(), "old");
        current.env.insert("GONE".into(), "1".into());
        let file = PoolSpec::new(demo(), "new");
        let flags = SpecFlags {
            min_warm: Some(1),
            ..Default::default()
        };
        let spec = spec_for_update(&demo(), current, &flags, Some(file), &[], &[]).unwrap();
        assert_eq!(spec.image, "new");
        assert!(spec.env.is_empty());
        assert_eq!(spec.min_warm, 1);
    }
}
