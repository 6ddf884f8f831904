//! The registry's state and rules: schemas by id, subjects and their versions, configs
//! and modes, kept in memory and written through to the meta store.
//!
//! Every change is one meta-store transaction, committed (fsynced) before the change is
//! applied in memory and answered, under the one state lock: changes are serialised
//! (they are rare: a schema is registered once per deploy) and a crash loses nothing
//! that was answered. Ids come from a durable counter and are never handed out twice; a
//! schema keeps its id forever, so registering the same schema again, in any subject,
//! after a soft or permanent delete, gives the same id.
//!
//! Every call names its caller (`Principal`); today it is only logged with changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use herald_broker::Principal;
use herald_meta::{MetaStore, RegistryWrite};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::compat::{self, Earlier, Level};
use crate::error::{RegistryError, Result};
use crate::schema::{ParsedSchema, Reference, SchemaType, StoredSchema};

/// Largest schema text accepted by default.
pub const SCHEMA_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Most schemas one schema may import, directly and through its imports.
pub const REFERENCES_MAX: usize = 1000;
/// Largest schema id (Confluent's ids are positive 32-bit integers).
const SCHEMA_ID_MAX: u64 = i32::MAX as u64;

#[derive(Debug, Clone)]
pub struct RegistryLimits {
    pub schema_bytes_max: usize,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            schema_bytes_max: SCHEMA_BYTES_MAX_DEFAULT,
        }
    }
}

/// A registry mode: who may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    Readwrite,
    Readonly,
    ReadonlyOverride,
    Import,
}

impl Mode {
    pub fn parse(text: &str) -> Option<Mode> {
        Some(match text.to_ascii_uppercase().as_str() {
            "READWRITE" => Mode::Readwrite,
            "READONLY" => Mode::Readonly,
            "READONLY_OVERRIDE" => Mode::ReadonlyOverride,
            "IMPORT" => Mode::Import,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Readwrite => "READWRITE",
            Mode::Readonly => "READONLY",
            Mode::ReadonlyOverride => "READONLY_OVERRIDE",
            Mode::Import => "IMPORT",
        }
    }
}

/// Config fields other than the compatibility level that Confluent's clients know; they
/// are kept and returned, not acted on (except `normalize`).
pub const CONFIG_FIELDS: &[&str] = &[
    "alias",
    "normalize",
    "validateFields",
    "validateRules",
    "compatibilityGroup",
    "defaultMetadata",
    "overrideMetadata",
    "defaultRuleSet",
    "overrideRuleSet",
];

/// A subject's (or the global) config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(rename = "compatibilityLevel", skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<Level>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Config {
    fn normalize(&self) -> bool {
        self.other.get("normalize").and_then(Value::as_bool) == Some(true)
    }
}

/// Which version a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(u32),
}

impl VersionSpec {
    /// `latest` (any case), `-1`, or 1..=2^31-1; anything else is 42202.
    pub fn parse(text: &str) -> Result<VersionSpec> {
        if text.eq_ignore_ascii_case("latest") || text == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match text.parse::<u32>() {
            Ok(n) if n >= 1 && u64::from(n) <= SCHEMA_ID_MAX => Ok(VersionSpec::Number(n)),
            _ => Err(RegistryError::invalid_version(text)),
        }
    }
}

/// A register, lookup or compatibility-check body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaRequest {
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default)]
    pub schema_type: Option<String>,
    #[serde(default)]
    pub references: Option<Vec<ReferenceRequest>>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub rule_set: Option<Value>,
    /// IMPORT mode only: the id and version to register under.
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub version: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReferenceRequest {
    pub name: String,
    pub subject: String,
    pub version: i64,
}

/// One version of a subject, as the API shows it.
#[derive(Debug, Clone)]
pub struct VersionView {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: Arc<StoredSchema>,
    pub deleted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct VersionRecord {
    id: u32,
    #[serde(default)]
    deleted: bool,
}

#[derive(Default)]
struct State {
    schemas: HashMap<u32, Arc<StoredSchema>>,
    /// Identity (type, references, canonical text) -> id.
    ids: HashMap<String, u32>,
    subjects: BTreeMap<String, BTreeMap<u32, VersionRecord>>,
    /// "" is the global config.
    configs: BTreeMap<String, Config>,
    /// "" is the global mode.
    modes: BTreeMap<String, Mode>,
    /// The smallest id never handed out.
    next_id: u64,
    /// Parsed schemas by id, made when first needed for a compatibility check.
    parsed: HashMap<u32, Arc<ParsedSchema>>,
}

pub struct Registry {
    meta: Arc<MetaStore>,
    state: Mutex<State>,
    limits: RegistryLimits,
}

impl Registry {
    /// Load the registry's tables from the meta store.
    pub fn open(meta: Arc<MetaStore>, limits: RegistryLimits) -> Result<Registry> {
        let tables = meta.registry_tables().map_err(RegistryError::store)?;
        let mut state = State {
            next_id: tables.next_schema_id.max(1),
            ..State::default()
        };
        for (id, bytes) in tables.schemas {
            state
                .schemas
                .insert(id, Arc::new(decode(&format!("schema {id}"), &bytes)?));
        }
        state.ids = tables.schema_ids.into_iter().collect();
        for (subject, version, bytes) in tables.versions {
            let record: VersionRecord = decode(&format!("{subject} version {version}"), &bytes)?;
            state
                .subjects
                .entry(subject)
                .or_default()
                .insert(version, record);
        }
        for (subject, bytes) in tables.configs {
            let config = decode(&format!("config of {subject:?}"), &bytes)?;
            state.configs.insert(subject, config);
        }
        for (subject, bytes) in tables.modes {
            let mode = decode(&format!("mode of {subject:?}"), &bytes)?;
            state.modes.insert(subject, mode);
        }
        Ok(Registry {
            meta,
            state: Mutex::new(state),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Changes are applied in memory only after their commit, by code that does not
        // panic midway; a poisoned lock still guards consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn commit(&self, write: &RegistryWrite) -> Result<()> {
        self.meta
            .registry_write(write)
            .map_err(RegistryError::store)
    }

    /// Register `request` under `subject`, or return the id and version it already has
    /// there. Blocks on the meta store's fsync: call it off the async threads.
    pub fn register(
        &self,
        who: &Principal,
        subject: &str,
        request: &SchemaRequest,
        normalize: bool,
    ) -> Result<(u32, u32)> {
        let mut state = self.lock();
        let mode = state.mode_of(subject);
        if matches!(mode, Mode::Readonly | Mode::ReadonlyOverride) {
            return Err(RegistryError::not_permitted(format!(
                "Subject {subject} is in read-only mode"
            )));
        }
        let import = mode == Mode::Import;
        if !import
            && (request.id.is_some_and(|id| id >= 0) || request.version.is_some_and(|v| v > 0))
        {
            return Err(RegistryError::not_permitted(format!(
                "Subject {subject} is not in import mode"
            )));
        }
        let normalize = normalize || state.config_of(subject).normalize();
        let candidate = self.candidate(&mut state, request, normalize)?;

        let existing_id = state.ids.get(&candidate.key).copied();
        if let Some(id) = existing_id
            && let Some((version, _)) = state.subjects.get(subject).and_then(|versions| {
                versions
                    .iter()
                    .rev()
                    .find(|(_, r)| r.id == id && !r.deleted)
            })
            && !(import
                && request
                    .version
                    .is_some_and(|v| v > 0 && v as u64 != u64::from(*version)))
        {
            return Ok((id, *version));
        }

        if !import {
            let level = state.level_of(subject);
            let messages = self.incompatibilities(&mut state, subject, level, &candidate.parsed)?;
            if !messages.is_empty() {
                return Err(RegistryError::new(
                    crate::error::INCOMPATIBLE_SCHEMA,
                    format!(
                        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                        messages.join(", ")
                    ),
                ));
            }
        }

        let mut write = RegistryWrite::default();
        let id = match (existing_id, request.id.filter(|id| *id >= 0)) {
            (Some(existing), Some(asked)) if i64::from(existing) != asked => {
                return Err(RegistryError::not_permitted(format!(
                    "Overwrite new schema with id {asked} is not permitted."
                )));
            }
            (Some(existing), _) => existing,
            (None, Some(asked)) => {
                let asked = u32::try_from(asked)
                    .ok()
                    .filter(|a| *a >= 1 && u64::from(*a) <= SCHEMA_ID_MAX)
                    .ok_or_else(|| {
                        RegistryError::new(
                            crate::error::INVALID_SCHEMA,
                            format!("Invalid schema id {asked}"),
                        )
                    })?;
                if state.schemas.contains_key(&asked) {
                    return Err(RegistryError::not_permitted(format!(
                        "Overwrite new schema with id {asked} is not permitted."
                    )));
                }
                asked
            }
            (None, None) => {
                if state.next_id > SCHEMA_ID_MAX {
                    return Err(RegistryError::store("every schema id has been handed out"));
                }
                state.next_id as u32
            }
        };
        let versions = state.subjects.get(subject);
        let version = match request.version.filter(|v| *v > 0) {
            Some(asked) => {
                let asked = u32::try_from(asked)
                    .ok()
                    .filter(|a| u64::from(*a) <= SCHEMA_ID_MAX)
                    .ok_or_else(|| RegistryError::invalid_version(&asked.to_string()))?;
                if versions.is_some_and(|v| v.contains_key(&asked)) {
                    return Err(RegistryError::not_permitted(format!(
                        "Version {asked} of subject {subject} already exists"
                    )));
                }
                asked
            }
            None => versions
                .and_then(|v| v.keys().next_back().copied())
                .unwrap_or(0)
                .checked_add(1)
                .filter(|v| u64::from(*v) <= SCHEMA_ID_MAX)
                .ok_or_else(|| RegistryError::store("the subject has no version numbers left"))?,
        };
        let record = VersionRecord { id, deleted: false };
        if existing_id.is_none() {
            write.schemas.push((id, encode(&candidate.stored)));
            write.schema_ids.push((candidate.key.clone(), id));
        }
        write
            .versions
            .push((subject.to_string(), version, Some(encode(&record))));
        let next_id = state.next_id.max(u64::from(id) + 1);
        if next_id != state.next_id {
            write.next_schema_id = Some(next_id);
        }
        self.commit(&write)?;

        state.next_id = next_id;
        if existing_id.is_none() {
            state.schemas.insert(id, Arc::new(candidate.stored));
            state.ids.insert(candidate.key, id);
            state.parsed.insert(id, Arc::new(candidate.parsed));
        }
        state
            .subjects
            .entry(subject.to_string())
            .or_default()
            .insert(version, record);
        tracing::info!(principal = %who.name, subject, id, version, "schema registered");
        Ok((id, version))
    }

    /// The version of `subject` that has the schema of `request`.
    pub fn lookup(
        &self,
        _who: &Principal,
        subject: &str,
        request: &SchemaRequest,
        normalize: bool,
        deleted: bool,
    ) -> Result<VersionView> {
        let mut state = self.lock();
        let versions = state.live_versions(subject, deleted)?;
        let normalize = normalize || state.config_of(subject).normalize();
        let candidate = self.candidate(&mut state, request, normalize)?;
        let id = state
            .ids
            .get(&candidate.key)
            .copied()
            .ok_or_else(RegistryError::schema_not_found)?;
        let version = versions
            .iter()
            .rev()
            .find(|(_, r)| r.id == id)
            .map(|(v, _)| *v)
            .ok_or_else(RegistryError::schema_not_found)?;
        state.view(subject, version)
    }

    /// Parse and identify the schema of a request.
    fn candidate(
        &self,
        state: &mut State,
        request: &SchemaRequest,
        normalize: bool,
    ) -> Result<Candidate> {
        let text = request.schema.as_deref().unwrap_or("").trim();
        if text.is_empty() {
            return Err(RegistryError::new(
                crate::error::INVALID_SCHEMA,
                "Empty schema",
            ));
        }
        if text.len() > self.limits.schema_bytes_max {
            return Err(RegistryError::invalid_schema(format!(
                "the schema is {} bytes, more than schema_bytes_max ({})",
                text.len(),
                self.limits.schema_bytes_max
            )));
        }
        let schema_type = match request.schema_type.as_deref() {
            None => SchemaType::Avro,
            Some(t) => SchemaType::parse(t).ok_or_else(|| {
                RegistryError::new(
                    crate::error::INVALID_SCHEMA,
                    format!("Invalid schema type {t}"),
                )
            })?,
        };
        if !SchemaType::SUPPORTED.contains(&schema_type) {
            return Err(RegistryError::new(
                crate::error::INVALID_SCHEMA,
                format!(
                    "Schema type {} is not supported by this registry yet",
                    schema_type.name()
                ),
            ));
        }
        let mut references = Vec::new();
        for r in request.references.iter().flatten() {
            let version = match r.version {
                -1 => state
                    .latest(&r.subject, false)
                    .ok_or_else(|| missing_reference(&r.subject, r.version))?,
                v => u32::try_from(v)
                    .ok()
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| missing_reference(&r.subject, v))?,
            };
            references.push(Reference {
                name: r.name.clone(),
                subject: r.subject.clone(),
                version,
            });
        }
        let imports = state.imports(&references)?;
        let parsed = ParsedSchema::parse(schema_type, text, &imports)
            .map_err(RegistryError::invalid_schema)?;
        let canonical = parsed.canonical(normalize);
        let refs_key: Vec<String> = references
            .iter()
            .map(|r| format!("{}={}/{}", r.name, r.subject, r.version))
            .collect();
        let key = format!(
            "{}|{}|{}",
            schema_type.name(),
            refs_key.join(","),
            canonical
        );
        let stored = StoredSchema {
            schema_type,
            schema: if normalize {
                canonical
            } else {
                text.to_string()
            },
            references,
            metadata: request.metadata.clone(),
            rule_set: request.rule_set.clone(),
        };
        Ok(Candidate {
            key,
            parsed,
            stored,
        })
    }

    /// The compatibility messages of `new` against `subject`'s live versions at `level`.
    fn incompatibilities(
        &self,
        state: &mut State,
        subject: &str,
        level: Level,
        new: &ParsedSchema,
    ) -> Result<Vec<String>> {
        if level == Level::None {
            return Ok(Vec::new());
        }
        let live: Vec<(u32, u32)> = state
            .subjects
            .get(subject)
            .map(|versions| {
                versions
                    .iter()
                    .filter(|(_, r)| !r.deleted)
                    .map(|(v, r)| (*v, r.id))
                    .collect()
            })
            .unwrap_or_default();
        let mut parsed = Vec::with_capacity(live.len());
        for (version, id) in &live {
            let schema = state.parsed_by_id(*id)?;
            let text = state
                .schemas
                .get(id)
                .map(|s| s.schema.clone())
                .unwrap_or_default();
            parsed.push((*version, text, schema));
        }
        let earlier: Vec<Earlier<'_>> = parsed
            .iter()
            .map(|(version, text, schema)| Earlier {
                version: *version,
                text,
                schema,
            })
            .collect();
        Ok(compat::check(level, new, &earlier))
    }

    /// Whether `request` may follow `subject`'s versions (`None`: by the subject's level,
    /// against what the level names) or one version (`Some`: against that one only).
    pub fn check(
        &self,
        _who: &Principal,
        subject: &str,
        version: Option<VersionSpec>,
        request: &SchemaRequest,
        normalize: bool,
    ) -> Result<Vec<String>> {
        let mut state = self.lock();
        let normalize = normalize || state.config_of(subject).normalize();
        let candidate = self.candidate(&mut state, request, normalize)?;
        let level = state.level_of(subject);
        let Some(spec) = version else {
            return self.incompatibilities(&mut state, subject, level, &candidate.parsed);
        };
        let view = match state.resolve(subject, spec, false) {
            Ok(v) => v,
            // Checking against the latest version of a subject that has none: compatible.
            Err(e)
                if spec == VersionSpec::Latest
                    && e.error_code == crate::error::SUBJECT_NOT_FOUND =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let old = state.parsed_by_id(view.id)?;
        let single = match level {
            Level::BackwardTransitive => Level::Backward,
            Level::ForwardTransitive => Level::Forward,
            Level::FullTransitive => Level::Full,
            other => other,
        };
        let earlier = [Earlier {
            version: view.version,
            text: &view.schema.schema,
            schema: &old,
        }];
        Ok(compat::check(single, &candidate.parsed, &earlier))
    }

    /// Schema `id` parsed (cached after the first call).
    pub fn parsed_schema(&self, id: u32) -> Result<Arc<ParsedSchema>> {
        let mut state = self.lock();
        if !state.id_in_use(id) {
            return Err(RegistryError::schema_id_not_found(id));
        }
        state.parsed_by_id(id)
    }

    pub fn schema_by_id(&self, id: u32) -> Result<Arc<StoredSchema>> {
        let state = self.lock();
        if !state.id_in_use(id) {
            return Err(RegistryError::schema_id_not_found(id));
        }
        state
            .schemas
            .get(&id)
            .cloned()
            .ok_or_else(|| RegistryError::schema_id_not_found(id))
    }

    /// Schema `id`'s text in `format` (`?format=`; Protobuf's `serialized` is the base64
    /// descriptor), or as stored when the format has no such form.
    pub fn schema_text(&self, id: u32, format: Option<&str>) -> Result<String> {
        let mut state = self.lock();
        let stored = state
            .schemas
            .get(&id)
            .cloned()
            .ok_or_else(|| RegistryError::schema_id_not_found(id))?;
        let Some(format) = format.filter(|f| !f.is_empty()) else {
            return Ok(stored.schema.clone());
        };
        let parsed = state.parsed_by_id(id)?;
        Ok(parsed
            .formatted(format)
            .unwrap_or_else(|| stored.schema.clone()))
    }

    /// (subject, version) pairs that have schema `id`.
    pub fn versions_of_id(&self, id: u32, deleted: bool) -> Result<Vec<(String, u32)>> {
        let state = self.lock();
        if !state.id_in_use(id) {
            return Err(RegistryError::schema_id_not_found(id));
        }
        let mut out = Vec::new();
        for (subject, versions) in &state.subjects {
            for (version, record) in versions {
                if record.id == id && (deleted || !record.deleted) {
                    out.push((subject.clone(), *version));
                }
            }
        }
        Ok(out)
    }

    /// Subjects with a live version (`deleted`: also those whose versions are all
    /// soft-deleted; `deleted_only`: only those), starting with `prefix`.
    pub fn subjects(&self, prefix: &str, deleted: bool, deleted_only: bool) -> Vec<String> {
        let state = self.lock();
        state
            .subjects
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .filter(|(_, versions)| {
                let live = versions.values().any(|r| !r.deleted);
                let soft = versions.values().any(|r| r.deleted);
                if deleted_only {
                    soft
                } else {
                    live || (deleted && soft)
                }
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn versions(&self, subject: &str, deleted: bool, deleted_only: bool) -> Result<Vec<u32>> {
        let state = self.lock();
        let versions = state.live_versions(subject, deleted || deleted_only)?;
        Ok(versions
            .iter()
            .filter(|(_, r)| !deleted_only || r.deleted)
            .map(|(v, _)| *v)
            .collect())
    }

    pub fn version(&self, subject: &str, spec: VersionSpec, deleted: bool) -> Result<VersionView> {
        self.lock().resolve(subject, spec, deleted)
    }

    /// Ids of the schemas that import `subject`'s version `spec`.
    pub fn referenced_by(&self, subject: &str, spec: VersionSpec) -> Result<Vec<u32>> {
        let state = self.lock();
        let view = state.resolve(subject, spec, true)?;
        Ok(state.referrers(subject, view.version))
    }

    /// Soft-delete every live version of `subject`, or (`permanent`) remove every
    /// soft-deleted one. Returns the versions deleted.
    pub fn delete_subject(
        &self,
        who: &Principal,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>> {
        let mut state = self.lock();
        state.writable(subject)?;
        let versions = state
            .subjects
            .get(subject)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| RegistryError::subject_not_found(subject))?;
        let live: Vec<u32> = versions
            .iter()
            .filter(|(_, r)| !r.deleted)
            .map(|(v, _)| *v)
            .collect();
        let mut write = RegistryWrite::default();
        let deleted: Vec<u32> = if permanent {
            if !live.is_empty() {
                return Err(RegistryError::subject_not_soft_deleted(subject));
            }
            for version in versions.keys() {
                state.not_referenced(subject, *version)?;
                write.versions.push((subject.to_string(), *version, None));
            }
            write.configs.push((subject.to_string(), None));
            write.modes.push((subject.to_string(), None));
            versions.keys().copied().collect()
        } else {
            if live.is_empty() {
                return Err(RegistryError::subject_soft_deleted(subject));
            }
            for version in &live {
                state.not_referenced(subject, *version)?;
                let record = VersionRecord {
                    id: versions[version].id,
                    deleted: true,
                };
                write
                    .versions
                    .push((subject.to_string(), *version, Some(encode(&record))));
            }
            live
        };
        self.commit(&write)?;
        if permanent {
            state.subjects.remove(subject);
            state.configs.remove(subject);
            state.modes.remove(subject);
        } else if let Some(versions) = state.subjects.get_mut(subject) {
            for v in &deleted {
                if let Some(r) = versions.get_mut(v) {
                    r.deleted = true;
                }
            }
        }
        tracing::info!(principal = %who.name, subject, permanent, versions = ?deleted, "subject deleted");
        Ok(deleted)
    }

    /// Soft-delete one version, or (`permanent`) remove a soft-deleted one.
    pub fn delete_version(
        &self,
        who: &Principal,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<u32> {
        let mut state = self.lock();
        state.writable(subject)?;
        // A numbered version is found soft-deleted or not (deleting it again is 40406);
        // `latest` is the latest live one, or for a permanent delete the latest of all.
        let view = state.resolve(subject, spec, permanent || spec != VersionSpec::Latest)?;
        let version = view.version;
        state.not_referenced(subject, version)?;
        let mut write = RegistryWrite::default();
        if permanent {
            if !view.deleted {
                return Err(RegistryError::version_not_soft_deleted(subject, version));
            }
            write.versions.push((subject.to_string(), version, None));
        } else {
            if view.deleted {
                return Err(RegistryError::version_soft_deleted(subject, version));
            }
            let record = VersionRecord {
                id: view.id,
                deleted: true,
            };
            write
                .versions
                .push((subject.to_string(), version, Some(encode(&record))));
        }
        self.commit(&write)?;
        if let Some(versions) = state.subjects.get_mut(subject) {
            if permanent {
                versions.remove(&version);
            } else if let Some(r) = versions.get_mut(&version) {
                r.deleted = true;
            }
            if versions.is_empty() {
                state.subjects.remove(subject);
            }
        }
        tracing::info!(principal = %who.name, subject, version, permanent, "schema version deleted");
        Ok(version)
    }

    /// The config of `subject` (None: global). A subject without one is 40408, or with
    /// `default_to_global` the global config.
    pub fn config(&self, subject: Option<&str>, default_to_global: bool) -> Result<Config> {
        let state = self.lock();
        match subject {
            None => Ok(state.global_config()),
            Some(s) => match state.configs.get(s) {
                Some(c) => Ok(c.clone()),
                None if default_to_global => Ok(state.global_config()),
                None => Err(RegistryError::new(
                    crate::error::SUBJECT_COMPATIBILITY_NOT_CONFIGURED,
                    format!("Subject '{s}' does not have subject-level compatibility configured"),
                )),
            },
        }
    }

    pub fn set_config(&self, who: &Principal, subject: Option<&str>, config: Config) -> Result<()> {
        let mut state = self.lock();
        let key = subject.unwrap_or("").to_string();
        let mut merged = state.configs.get(&key).cloned().unwrap_or_default();
        if config.compatibility.is_some() {
            merged.compatibility = config.compatibility;
        }
        for (k, v) in config.other {
            merged.other.insert(k, v);
        }
        self.commit(&RegistryWrite {
            configs: vec![(key.clone(), Some(encode(&merged)))],
            ..Default::default()
        })?;
        tracing::info!(principal = %who.name, subject = %key, compatibility = ?merged.compatibility, "registry config set");
        state.configs.insert(key, merged);
        Ok(())
    }

    /// Remove `subject`'s config (None: reset the global one); returns what it was.
    pub fn delete_config(&self, who: &Principal, subject: Option<&str>) -> Result<Config> {
        let mut state = self.lock();
        let key = subject.unwrap_or("").to_string();
        let old = match subject {
            None => state.global_config(),
            Some(s) => match state.configs.get(s) {
                Some(c) => c.clone(),
                None if !state.subjects.contains_key(s) => {
                    return Err(RegistryError::subject_not_found(s));
                }
                None => state.global_config(),
            },
        };
        self.commit(&RegistryWrite {
            configs: vec![(key.clone(), None)],
            ..Default::default()
        })?;
        state.configs.remove(&key);
        tracing::info!(principal = %who.name, subject = %key, "registry config deleted");
        Ok(old)
    }

    pub fn mode(&self, subject: Option<&str>, default_to_global: bool) -> Result<Mode> {
        let state = self.lock();
        match subject {
            None => Ok(state.modes.get("").copied().unwrap_or(Mode::Readwrite)),
            Some(s) => match state.modes.get(s) {
                Some(m) => Ok(*m),
                None if default_to_global => {
                    Ok(state.modes.get("").copied().unwrap_or(Mode::Readwrite))
                }
                None => Err(RegistryError::new(
                    crate::error::SUBJECT_MODE_NOT_CONFIGURED,
                    format!("Subject '{s}' does not have subject-level mode configured"),
                )),
            },
        }
    }

    /// Set a mode. IMPORT needs an empty registry (or subject) unless `force`.
    pub fn set_mode(
        &self,
        who: &Principal,
        subject: Option<&str>,
        mode: Mode,
        force: bool,
    ) -> Result<()> {
        let mut state = self.lock();
        if mode == Mode::Import && !force {
            let busy = match subject {
                None => state.subjects.values().any(|v| !v.is_empty()),
                Some(s) => state.subjects.get(s).is_some_and(|v| !v.is_empty()),
            };
            if busy {
                return Err(RegistryError::not_permitted(
                    "Cannot import since found existing subjects",
                ));
            }
        }
        let key = subject.unwrap_or("").to_string();
        self.commit(&RegistryWrite {
            modes: vec![(key.clone(), Some(encode(&mode)))],
            ..Default::default()
        })?;
        tracing::info!(principal = %who.name, subject = %key, mode = mode.name(), "registry mode set");
        state.modes.insert(key, mode);
        Ok(())
    }

    /// Remove `subject`'s mode; returns what it was.
    pub fn delete_mode(&self, who: &Principal, subject: &str) -> Result<Mode> {
        let mut state = self.lock();
        let old = state.mode_of(subject);
        if !state.modes.contains_key(subject) && !state.subjects.contains_key(subject) {
            return Err(RegistryError::subject_not_found(subject));
        }
        self.commit(&RegistryWrite {
            modes: vec![(subject.to_string(), None)],
            ..Default::default()
        })?;
        state.modes.remove(subject);
        tracing::info!(principal = %who.name, subject, "registry mode deleted");
        Ok(old)
    }

    /// Every schema with a live version (or `deleted`), latest only when `latest_only`,
    /// of subjects starting with `prefix`.
    pub fn schemas(&self, prefix: &str, deleted: bool, latest_only: bool) -> Vec<VersionView> {
        let state = self.lock();
        let mut out = Vec::new();
        for (subject, versions) in state.subjects.range(prefix.to_string()..) {
            if !subject.starts_with(prefix) {
                break;
            }
            let shown: Vec<u32> = versions
                .iter()
                .filter(|(_, r)| deleted || !r.deleted)
                .map(|(v, _)| *v)
                .collect();
            let shown: &[u32] = if latest_only {
                shown.last().map(std::slice::from_ref).unwrap_or(&[])
            } else {
                &shown
            };
            for version in shown {
                if let Ok(view) = state.view(subject, *version) {
                    out.push(view);
                }
            }
        }
        out
    }
}

struct Candidate {
    key: String,
    parsed: ParsedSchema,
    stored: StoredSchema,
}

fn missing_reference(subject: &str, version: i64) -> RegistryError {
    RegistryError::invalid_schema(format!(
        "the reference to subject '{subject}' version {version} names no registered schema"
    ))
}

impl State {
    fn mode_of(&self, subject: &str) -> Mode {
        self.modes
            .get(subject)
            .or_else(|| self.modes.get(""))
            .copied()
            .unwrap_or(Mode::Readwrite)
    }

    fn writable(&self, subject: &str) -> Result<()> {
        match self.mode_of(subject) {
            Mode::Readonly | Mode::ReadonlyOverride => Err(RegistryError::not_permitted(format!(
                "Subject {subject} is in read-only mode"
            ))),
            _ => Ok(()),
        }
    }

    fn global_config(&self) -> Config {
        let mut config = self.configs.get("").cloned().unwrap_or_default();
        config.compatibility.get_or_insert(Level::DEFAULT);
        config
    }

    fn config_of(&self, subject: &str) -> Config {
        self.configs
            .get(subject)
            .cloned()
            .unwrap_or_else(|| self.global_config())
    }

    fn level_of(&self, subject: &str) -> Level {
        self.configs
            .get(subject)
            .and_then(|c| c.compatibility)
            .or_else(|| self.configs.get("").and_then(|c| c.compatibility))
            .unwrap_or(Level::DEFAULT)
    }

    /// A subject's versions, if it has a live one (or, with `deleted`, any).
    fn live_versions(&self, subject: &str, deleted: bool) -> Result<BTreeMap<u32, VersionRecord>> {
        let versions = self
            .subjects
            .get(subject)
            .filter(|v| v.values().any(|r| deleted || !r.deleted))
            .ok_or_else(|| RegistryError::subject_not_found(subject))?;
        Ok(versions
            .iter()
            .filter(|(_, r)| deleted || !r.deleted)
            .map(|(v, r)| (*v, *r))
            .collect())
    }

    fn latest(&self, subject: &str, deleted: bool) -> Option<u32> {
        self.subjects.get(subject).and_then(|versions| {
            versions
                .iter()
                .rev()
                .find(|(_, r)| deleted || !r.deleted)
                .map(|(v, _)| *v)
        })
    }

    fn resolve(&self, subject: &str, spec: VersionSpec, deleted: bool) -> Result<VersionView> {
        let versions = self.live_versions(subject, deleted)?;
        let version = match spec {
            VersionSpec::Latest => versions
                .keys()
                .next_back()
                .copied()
                .ok_or_else(|| RegistryError::subject_not_found(subject))?,
            VersionSpec::Number(n) => {
                if !versions.contains_key(&n) {
                    return Err(RegistryError::version_not_found(n));
                }
                n
            }
        };
        self.view(subject, version)
    }

    fn view(&self, subject: &str, version: u32) -> Result<VersionView> {
        let record = self
            .subjects
            .get(subject)
            .and_then(|v| v.get(&version))
            .ok_or_else(|| RegistryError::version_not_found(version))?;
        let schema = self
            .schemas
            .get(&record.id)
            .cloned()
            .ok_or_else(|| RegistryError::schema_id_not_found(record.id))?;
        Ok(VersionView {
            subject: subject.to_string(),
            version,
            id: record.id,
            schema,
            deleted: record.deleted,
        })
    }

    fn id_in_use(&self, id: u32) -> bool {
        self.subjects
            .values()
            .any(|versions| versions.values().any(|r| r.id == id))
    }

    /// Ids of schemas (with a version) that import (subject, version).
    fn referrers(&self, subject: &str, version: u32) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .schemas
            .iter()
            .filter(|(id, s)| {
                self.id_in_use(**id)
                    && s.references
                        .iter()
                        .any(|r| r.subject == subject && r.version == version)
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn not_referenced(&self, subject: &str, version: u32) -> Result<()> {
        if self.referrers(subject, version).is_empty() {
            return Ok(());
        }
        Err(RegistryError::new(
            crate::error::REFERENCE_EXISTS,
            format!(
                "One or more references exist to the schema {{magic=1,keytype=SCHEMA,subject={subject},version={version}}}."
            ),
        ))
    }

    /// The schemas `references` import, transitively, dependencies first.
    fn imports(&self, references: &[Reference]) -> Result<Vec<(String, Arc<StoredSchema>)>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for r in references {
            self.import(r, &mut seen, &mut out, 0)?;
        }
        Ok(out)
    }

    fn import(
        &self,
        r: &Reference,
        seen: &mut HashSet<(String, u32)>,
        out: &mut Vec<(String, Arc<StoredSchema>)>,
        depth: usize,
    ) -> Result<()> {
        if !seen.insert((r.subject.clone(), r.version)) {
            return Ok(());
        }
        if seen.len() > REFERENCES_MAX || depth > REFERENCES_MAX {
            return Err(RegistryError::invalid_schema(format!(
                "the schema imports more than {REFERENCES_MAX} schemas"
            )));
        }
        let schema = self
            .subjects
            .get(&r.subject)
            .and_then(|v| v.get(&r.version))
            .and_then(|record| self.schemas.get(&record.id))
            .cloned()
            .ok_or_else(|| missing_reference(&r.subject, i64::from(r.version)))?;
        for inner in &schema.references {
            self.import(inner, seen, out, depth + 1)?;
        }
        out.push((r.name.clone(), schema));
        Ok(())
    }

    fn parsed_by_id(&mut self, id: u32) -> Result<Arc<ParsedSchema>> {
        if let Some(p) = self.parsed.get(&id) {
            return Ok(p.clone());
        }
        let stored = self
            .schemas
            .get(&id)
            .cloned()
            .ok_or_else(|| RegistryError::schema_id_not_found(id))?;
        let imports = self.imports(&stored.references)?;
        let parsed =
            ParsedSchema::parse(stored.schema_type, &stored.schema, &imports).map_err(|e| {
                RegistryError::store(format!("stored schema {id} no longer parses: {e}"))
            })?;
        let parsed = Arc::new(parsed);
        self.parsed.insert(id, parsed.clone());
        Ok(parsed)
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings, numbers and JSON values always serialise.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::store(format!("stored {what} is not valid: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
    const V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"int","default":0}]}"#;
    const BAD: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"c","type":"int"}]}"#;

    fn open(dir: &std::path::Path) -> Registry {
        let meta = Arc::new(MetaStore::open(&dir.join("meta.redb")).unwrap());
        Registry::open(meta, RegistryLimits::default()).unwrap()
    }

    fn req(schema: &str) -> SchemaRequest {
        SchemaRequest {
            schema: Some(schema.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn ids_versions_and_configs_survive_reopen_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let who = Principal::anonymous();
        {
            let r = open(dir.path());
            assert_eq!(r.register(&who, "s", &req(V1), false).unwrap(), (1, 1));
            assert_eq!(r.register(&who, "s", &req(V1), false).unwrap(), (1, 1));
            assert_eq!(r.register(&who, "t", &req(V1), false).unwrap(), (1, 1));
            assert_eq!(r.register(&who, "s", &req(V2), false).unwrap(), (2, 2));
            let e = r.register(&who, "s", &req(BAD), false).unwrap_err();
            assert_eq!(e.error_code, crate::error::INCOMPATIBLE_SCHEMA);
            r.set_config(
                &who,
                Some("s"),
                Config {
                    compatibility: Some(Level::None),
                    ..Default::default()
                },
            )
            .unwrap();
            r.delete_version(&who, "s", VersionSpec::Number(2), false)
                .unwrap();
            r.delete_version(&who, "s", VersionSpec::Number(2), true)
                .unwrap();
        }
        let r = open(dir.path());
        assert_eq!(r.versions("s", true, false).unwrap(), vec![1]);
        assert_eq!(
            r.config(Some("s"), false).unwrap().compatibility,
            Some(Level::None)
        );
        // Schema 2 lost its last version; registering it again brings the same id back,
        // and a new schema gets 3, never an id handed out before.
        assert_eq!(r.register(&who, "s", &req(V2), false).unwrap(), (2, 2));
        assert_eq!(r.register(&who, "s", &req(BAD), false).unwrap(), (3, 3));
    }

    #[test]
    fn delete_states_have_their_codes() {
        let dir = tempfile::tempdir().unwrap();
        let who = Principal::anonymous();
        let r = open(dir.path());
        let code = |e: RegistryError| e.error_code;
        assert_eq!(code(r.delete_subject(&who, "s", false).unwrap_err()), 40401);
        r.register(&who, "s", &req(V1), false).unwrap();
        assert_eq!(code(r.delete_subject(&who, "s", true).unwrap_err()), 40405);
        assert_eq!(
            code(
                r.delete_version(&who, "s", VersionSpec::Number(1), true)
                    .unwrap_err()
            ),
            40407
        );
        assert_eq!(r.delete_subject(&who, "s", false).unwrap(), vec![1]);
        assert_eq!(code(r.delete_subject(&who, "s", false).unwrap_err()), 40404);
        assert_eq!(
            code(
                r.delete_version(&who, "s", VersionSpec::Number(1), false)
                    .unwrap_err()
            ),
            40406
        );
        assert_eq!(
            code(r.version("s", VersionSpec::Latest, false).unwrap_err()),
            40401
        );
        assert_eq!(r.version("s", VersionSpec::Latest, true).unwrap().id, 1);
        assert_eq!(r.delete_subject(&who, "s", true).unwrap(), vec![1]);
        assert_eq!(code(r.schema_by_id(1).unwrap_err()), 40403);
    }

    #[test]
    fn versions_parse_like_confluent() {
        assert_eq!(VersionSpec::parse("latest").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("LATEST").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("-1").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("7").unwrap(), VersionSpec::Number(7));
        for bad in ["0", "-2", "x", "", "2147483648", "99999999999999999999"] {
            assert_eq!(
                VersionSpec::parse(bad).unwrap_err().error_code,
                42202,
                "{bad}"
            );
        }
    }
}
