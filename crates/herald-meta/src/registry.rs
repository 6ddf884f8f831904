//! The schema registry's tables. The registry (crate `herald-registry`) keeps its whole
//! state in memory and writes every change here first, in one transaction, so a
//! register, a delete or a config change is durable (fsynced) before it is answered and
//! lands whole or not at all.
//!
//! Values are bytes the registry chooses (JSON, so fields can be added); the store only
//! knows the keys. The schema-id counter moves in the same transaction as the schema it
//! hands out, so an id is never given to two schemas, even across a crash.

use redb::{ReadableTable, TableDefinition};

use crate::{MetaStore, Result};

/// Schema id -> the schema (type, text, references) as the registry encoded it.
const REGISTRY_SCHEMAS: TableDefinition<u32, &[u8]> = TableDefinition::new("registry_schemas");
/// A schema's identity (type, normalised text, references) -> its id.
const REGISTRY_SCHEMA_IDS: TableDefinition<&str, u32> = TableDefinition::new("registry_schema_ids");
/// (subject, version) -> the version (schema id, soft-deleted or not).
const REGISTRY_VERSIONS: TableDefinition<(&str, u32), &[u8]> =
    TableDefinition::new("registry_versions");
/// Subject ("" for the global default) -> its config (compatibility level and more).
const REGISTRY_CONFIGS: TableDefinition<&str, &[u8]> = TableDefinition::new("registry_configs");
/// Subject ("" for the global default) -> its mode (READWRITE, READONLY, IMPORT).
const REGISTRY_MODES: TableDefinition<&str, &[u8]> = TableDefinition::new("registry_modes");
/// Small named values: the next schema id.
const REGISTRY_COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("registry_counters");

const NEXT_SCHEMA_ID_KEY: &str = "next_schema_id";

/// Everything the registry stored, read back at start-up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RegistryTables {
    pub schemas: Vec<(u32, Vec<u8>)>,
    pub schema_ids: Vec<(String, u32)>,
    pub versions: Vec<(String, u32, Vec<u8>)>,
    pub configs: Vec<(String, Vec<u8>)>,
    pub modes: Vec<(String, Vec<u8>)>,
    /// The smallest id never handed out (0 when none was).
    pub next_schema_id: u64,
}

/// One registry change, written in one transaction. `None` values delete the key.
#[derive(Debug, Default, Clone)]
pub struct RegistryWrite {
    pub schemas: Vec<(u32, Vec<u8>)>,
    pub schema_ids: Vec<(String, u32)>,
    pub versions: Vec<(String, u32, Option<Vec<u8>>)>,
    pub configs: Vec<(String, Option<Vec<u8>>)>,
    pub modes: Vec<(String, Option<Vec<u8>>)>,
    /// Moves the id counter; it never moves backwards (a smaller value is ignored).
    pub next_schema_id: Option<u64>,
}

impl RegistryWrite {
    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty()
            && self.schema_ids.is_empty()
            && self.versions.is_empty()
            && self.configs.is_empty()
            && self.modes.is_empty()
            && self.next_schema_id.is_none()
    }
}

impl MetaStore {
    /// Every registry table, whole. The registry's state is small (schemas and their
    /// versions), so it is read once at start-up and kept in memory.
    pub fn registry_tables(&self) -> Result<RegistryTables> {
        // A write transaction: it creates the tables of a store made before the registry.
        let txn = self.db.begin_write()?;
        let mut out = RegistryTables::default();
        {
            let table = txn.open_table(REGISTRY_SCHEMAS)?;
            for row in table.iter()? {
                let (k, v) = row?;
                out.schemas.push((k.value(), v.value().to_vec()));
            }
            let table = txn.open_table(REGISTRY_SCHEMA_IDS)?;
            for row in table.iter()? {
                let (k, v) = row?;
                out.schema_ids.push((k.value().to_string(), v.value()));
            }
            let table = txn.open_table(REGISTRY_VERSIONS)?;
            for row in table.iter()? {
                let (k, v) = row?;
                let (subject, version) = k.value();
                out.versions
                    .push((subject.to_string(), version, v.value().to_vec()));
            }
            for (definition, into) in [
                (REGISTRY_CONFIGS, &mut out.configs),
                (REGISTRY_MODES, &mut out.modes),
            ] {
                let table = txn.open_table(definition)?;
                for row in table.iter()? {
                    let (k, v) = row?;
                    into.push((k.value().to_string(), v.value().to_vec()));
                }
            }
            let table = txn.open_table(REGISTRY_COUNTERS)?;
            out.next_schema_id = table.get(NEXT_SCHEMA_ID_KEY)?.map_or(0, |v| v.value());
        }
        txn.commit()?;
        Ok(out)
    }

    /// Apply one registry change atomically and durably.
    pub fn registry_write(&self, write: &RegistryWrite) -> Result<()> {
        if write.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(REGISTRY_SCHEMAS)?;
            for (id, value) in &write.schemas {
                table.insert(*id, value.as_slice())?;
            }
            let mut table = txn.open_table(REGISTRY_SCHEMA_IDS)?;
            for (key, id) in &write.schema_ids {
                table.insert(key.as_str(), *id)?;
            }
            let mut table = txn.open_table(REGISTRY_VERSIONS)?;
            for (subject, version, value) in &write.versions {
                match value {
                    Some(v) => table.insert((subject.as_str(), *version), v.as_slice())?,
                    None => table.remove((subject.as_str(), *version))?,
                };
            }
            for (definition, rows) in [
                (REGISTRY_CONFIGS, &write.configs),
                (REGISTRY_MODES, &write.modes),
            ] {
                let mut table = txn.open_table(definition)?;
                for (subject, value) in rows {
                    match value {
                        Some(v) => table.insert(subject.as_str(), v.as_slice())?,
                        None => table.remove(subject.as_str())?,
                    };
                }
            }
            if let Some(next) = write.next_schema_id {
                let mut table = txn.open_table(REGISTRY_COUNTERS)?;
                let current = table.get(NEXT_SCHEMA_ID_KEY)?.map_or(0, |v| v.value());
                if next > current {
                    table.insert(NEXT_SCHEMA_ID_KEY, next)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_writes_survive_reopen_and_the_counter_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let store = MetaStore::open(&path).unwrap();
            assert_eq!(store.registry_tables().unwrap(), RegistryTables::default());
            store
                .registry_write(&RegistryWrite {
                    schemas: vec![(1, b"s1".to_vec())],
                    schema_ids: vec![("AVRO:\"int\"".into(), 1)],
                    versions: vec![("orders-value".into(), 1, Some(b"v1".to_vec()))],
                    configs: vec![("".into(), Some(b"c".to_vec()))],
                    modes: vec![("orders-value".into(), Some(b"m".to_vec()))],
                    next_schema_id: Some(2),
                })
                .unwrap();
            store
                .registry_write(&RegistryWrite {
                    modes: vec![("orders-value".into(), None)],
                    next_schema_id: Some(1),
                    ..Default::default()
                })
                .unwrap();
        }
        let store = MetaStore::open(&path).unwrap();
        let tables = store.registry_tables().unwrap();
        assert_eq!(tables.schemas, vec![(1, b"s1".to_vec())]);
        assert_eq!(tables.schema_ids, vec![("AVRO:\"int\"".to_string(), 1)]);
        assert_eq!(
            tables.versions,
            vec![("orders-value".to_string(), 1, b"v1".to_vec())]
        );
        assert_eq!(tables.configs, vec![(String::new(), b"c".to_vec())]);
        assert!(tables.modes.is_empty());
        assert_eq!(tables.next_schema_id, 2);
    }
}
