//! Entities: the declared schema of a table and the mapping between a typed Rust struct and a row.
//!
//! An entity is a serde struct plus a schema built with [`EntitySchema::builder`] and validated once, when its
//! repository opens ([`crate::orm::Repository::open`]). Example:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use shardcast::orm::{Entity, EntitySchema, FieldType, Order, SchemaBuilder};
//! use uuid::Uuid;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct Message {
//!     channel_id: Uuid,
//!     id: Option<Uuid>,           // generated (time UUID) when absent
//!     author: String,
//!     body: String,               // stored encrypted
//! }
//!
//! impl Entity for Message {
//!     fn schema() -> SchemaBuilder {
//!         EntitySchema::builder("messages")
//!             .column("channel_id", FieldType::Uuid)
//!             .column("id", FieldType::TimeUuid).generated()
//!             .column("author", FieldType::Text)
//!             .column("body", FieldType::EncryptedText)
//!             .partition_key(&["channel_id"])
//!             .clustering("id", Order::Desc)
//!             .index("author")
//!     }
//! }
//! assert!(Message::schema().build().is_ok());
//! ```
//!
//! Field values map to columns through `serde_json`: text <-> string, json <-> any JSON value (stored as text), number
//! <-> integer (i64), boolean <-> bool, uuid/timeuuid <-> UUID string (serde's form of `uuid::Uuid`), counter <-> integer,
//! blob <-> array of bytes (serde's form of `Vec<u8>`), encrypted text <-> string, encrypted json <-> any JSON value.
//! `None`/null is "no value". Fields that are not declared columns are an error at save time.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use super::backend::Order;
use super::backend::{ColumnDef, ColumnType, TTL_SECONDS_MAX, TableSchema, search_column};

/// Name length limit for tables and columns (CQL allows 48 characters for table names).
pub const NAME_BYTES_MAX: usize = 48;

/// The declared type of an entity column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// UTF-8 text.
    Text,
    /// Any JSON value, stored as text.
    Json,
    /// 64-bit signed integer.
    Number,
    /// Boolean.
    Boolean,
    /// UUID (generated as v4 when `.generated()`).
    Uuid,
    /// Version-1 time UUID, ordered by time (generated as v1 when `.generated()`).
    TimeUuid,
    /// 64-bit counter, changed only through [`crate::orm::Repository::increment`].
    Counter,
    /// Bytes.
    Blob,
    /// Text stored encrypted (AES-256-GCM; deterministic AES-GCM-SIV if the column is a key or indexed).
    EncryptedText,
    /// JSON stored encrypted (same schemes as `EncryptedText`).
    EncryptedJson,
}

impl FieldType {
    /// How the backend stores it.
    pub fn column_type(self) -> ColumnType {
        match self {
            FieldType::Text => ColumnType::Text,
            FieldType::Json => ColumnType::Json,
            FieldType::Number => ColumnType::Number,
            FieldType::Boolean => ColumnType::Boolean,
            FieldType::Uuid => ColumnType::Uuid,
            FieldType::TimeUuid => ColumnType::TimeUuid,
            FieldType::Counter => ColumnType::Counter,
            FieldType::Blob | FieldType::EncryptedText | FieldType::EncryptedJson => {
                ColumnType::Blob
            }
        }
    }

    /// Whether values are encrypted at rest.
    pub fn is_encrypted(self) -> bool {
        matches!(self, FieldType::EncryptedText | FieldType::EncryptedJson)
    }
}

/// One declared column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDef {
    /// Column name (also the serde field name).
    pub name: String,
    /// Declared type.
    pub field_type: FieldType,
    /// Generated when absent on save (uuid: v4, timeuuid: v1).
    pub generated: bool,
    /// Encrypted deterministically (encrypted key or indexed columns).
    pub deterministic: bool,
}

/// A validated entity schema: the fields and the backend table they become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitySchema {
    /// Declared fields, in declaration order.
    pub fields: Vec<FieldDef>,
    /// The physical table.
    pub table: TableSchema,
    /// Default TTL of a saved row, in seconds (`None`: rows never expire unless a write says so).
    pub ttl_seconds: Option<u32>,
}

/// A schema declaration error, found when the schema is built (at repository start-up).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schema for entity `{table}`: {message}")]
pub struct SchemaError {
    /// Table name as declared.
    pub table: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Builder of an [`EntitySchema`]; [`SchemaBuilder::build`] validates everything.
#[derive(Debug, Clone)]
pub struct SchemaBuilder {
    name: String,
    fields: Vec<FieldDef>,
    partition_key: Vec<String>,
    clustering: Vec<(String, Order)>,
    indexes: Vec<String>,
    local_indexes: Vec<String>,
    search: Vec<String>,
    ttl_seconds: Option<u32>,
    errors: Vec<String>,
}

impl EntitySchema {
    /// Starts the declaration of table `name`.
    pub fn builder(name: &str) -> SchemaBuilder {
        SchemaBuilder {
            name: name.to_string(),
            fields: Vec::new(),
            partition_key: Vec::new(),
            clustering: Vec::new(),
            indexes: Vec::new(),
            local_indexes: Vec::new(),
            search: Vec::new(),
            ttl_seconds: None,
            errors: Vec::new(),
        }
    }

    /// The field `name`.
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The table name.
    pub fn name(&self) -> &str {
        &self.table.name
    }

    /// Whether any column is encrypted.
    pub fn has_encrypted(&self) -> bool {
        self.fields.iter().any(|f| f.field_type.is_encrypted())
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && n.len() <= NAME_BYTES_MAX
}

impl SchemaBuilder {
    /// Declares a column.
    pub fn column(mut self, name: &str, field_type: FieldType) -> Self {
        self.fields.push(FieldDef {
            name: name.to_string(),
            field_type,
            generated: false,
            deterministic: false,
        });
        self
    }

    /// Marks the last declared column as generated when absent on save (uuid: v4; timeuuid: v1).
    pub fn generated(mut self) -> Self {
        match self.fields.last_mut() {
            Some(f) if matches!(f.field_type, FieldType::Uuid | FieldType::TimeUuid) => f.generated = true,
            Some(f) => self.errors.push(format!(
                "column `{}` is marked generated but only uuid and timeuuid columns can be generated",
                f.name
            )),
            None => self.errors.push("`.generated()` must follow a `.column(...)`".into()),
        }
        self
    }

    /// Sets the partition key (one or more columns, in order).
    pub fn partition_key(mut self, columns: &[&str]) -> Self {
        self.partition_key = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// Appends a clustering column with its order.
    pub fn clustering(mut self, column: &str, order: Order) -> Self {
        self.clustering.push((column.to_string(), order));
        self
    }

    /// Declares a secondary index on `column`.
    pub fn index(mut self, column: &str) -> Self {
        self.indexes.push(column.to_string());
        self
    }

    /// Declares a composite local index `(partition key..., column)`: key queries may add one equality filter on
    /// `column` (`Find::new().eq("company_id", c).eq("parent_id", p)`).
    pub fn local_index(mut self, column: &str) -> Self {
        self.local_indexes.push(column.to_string());
        self
    }

    /// Declares prefix search on text column `column`: key queries may add `Find::prefix(column, text)`, a
    /// case-insensitive prefix match within the partition. The ORM maintains a derived lowercase column for it.
    pub fn search(mut self, column: &str) -> Self {
        self.search.push(column.to_string());
        self
    }

    /// Saved rows of this entity expire `ttl` after their last `save` (rounded up to whole seconds, 1 s to 20 years);
    /// `Repository::save_with_ttl` overrides it per write.
    pub fn ttl(mut self, ttl: std::time::Duration) -> Self {
        match ttl_seconds(ttl) {
            Some(s) => self.ttl_seconds = Some(s),
            None => self.errors.push(format!(
                "ttl {ttl:?} must be between 1 second and {TTL_SECONDS_MAX} seconds"
            )),
        }
        self
    }

    /// Validates the declaration.
    pub fn build(self) -> Result<EntitySchema, SchemaError> {
        let table = self.name.clone();
        let err = |message: String| SchemaError {
            table: table.clone(),
            message,
        };
        if let Some(e) = self.errors.first() {
            return Err(err(e.clone()));
        }
        if !valid_name(&self.name) || self.name.starts_with("__") {
            return Err(err(format!(
                "table name `{}` must start with a letter, use only ASCII letters, digits and `_`, and be at most \
                 {NAME_BYTES_MAX} bytes",
                self.name
            )));
        }
        if self.fields.is_empty() {
            return Err(err("no columns declared".into()));
        }
        for (i, f) in self.fields.iter().enumerate() {
            if !valid_name(&f.name) {
                return Err(err(format!(
                    "column name `{}` must start with a letter, use only ASCII letters, digits and `_`, and be at \
                     most {NAME_BYTES_MAX} bytes",
                    f.name
                )));
            }
            if self.fields[..i]
                .iter()
                .any(|g| g.name.eq_ignore_ascii_case(&f.name))
            {
                return Err(err(format!(
                    "column `{}` is declared twice (names are case-insensitive)",
                    f.name
                )));
            }
        }
        let field = |n: &str| self.fields.iter().find(|f| f.name == n);
        if self.partition_key.is_empty() {
            return Err(err("the partition key is empty: call `.partition_key(&[...])` with at least one column".into()));
        }
        let mut keys: Vec<&str> = Vec::new();
        for p in &self.partition_key {
            let f = field(p).ok_or_else(|| {
                err(format!(
                    "partition key column `{p}` is not a declared column"
                ))
            })?;
            if !f.field_type.column_type().is_key_type() {
                return Err(err(format!(
                    "partition key column `{p}` has type {:?}, which cannot be a key (json and counter columns cannot)",
                    f.field_type
                )));
            }
            if keys.contains(&p.as_str()) {
                return Err(err(format!(
                    "column `{p}` appears twice in the primary key"
                )));
            }
            keys.push(p);
        }
        for (c, _) in &self.clustering {
            let f = field(c)
                .ok_or_else(|| err(format!("clustering column `{c}` is not a declared column")))?;
            if !f.field_type.column_type().is_clustering_type() {
                return Err(err(format!(
                    "clustering column `{c}` has type {:?}; clustering columns must be text, number, boolean, uuid \
                     or timeuuid (they need an order)",
                    f.field_type
                )));
            }
            if keys.contains(&c.as_str()) {
                return Err(err(format!(
                    "column `{c}` appears twice in the primary key"
                )));
            }
            keys.push(c);
        }
        for i in &self.indexes {
            let f = field(i)
                .ok_or_else(|| err(format!("indexed column `{i}` is not a declared column")))?;
            if self.partition_key.contains(i) {
                return Err(err(format!(
                    "column `{i}` is in the partition key and needs no secondary index"
                )));
            }
            if !f.field_type.column_type().is_key_type() {
                return Err(err(format!(
                    "column `{i}` has type {:?}, which cannot be indexed",
                    f.field_type
                )));
            }
            if self.indexes.iter().filter(|j| *j == i).count() > 1 {
                return Err(err(format!("index on `{i}` is declared twice")));
            }
        }
        for i in &self.local_indexes {
            let f = field(i)
                .ok_or_else(|| err(format!("local index column `{i}` is not a declared column")))?;
            if keys.contains(&i.as_str()) {
                return Err(err(format!(
                    "column `{i}` is a key column and needs no local index"
                )));
            }
            if !f.field_type.column_type().is_key_type() {
                return Err(err(format!(
                    "column `{i}` has type {:?}, which cannot be indexed",
                    f.field_type
                )));
            }
            if self.local_indexes.iter().filter(|j| *j == i).count() > 1 || self.indexes.contains(i)
            {
                return Err(err(format!(
                    "`{i}` has both or twice a global and a local index; declare one"
                )));
            }
        }
        for c in &self.search {
            let f = field(c)
                .ok_or_else(|| err(format!("search column `{c}` is not a declared column")))?;
            if f.field_type != FieldType::Text || keys.contains(&c.as_str()) {
                return Err(err(format!(
                    "search column `{c}` must be a plain (not encrypted) text column outside the primary key"
                )));
            }
            if self.search.iter().filter(|j| *j == c).count() > 1 {
                return Err(err(format!("search on `{c}` is declared twice")));
            }
            let derived = search_column(c);
            if derived.len() > NAME_BYTES_MAX || field(&derived).is_some() {
                return Err(err(format!(
                    "search column `{c}` needs the derived column name `{derived}` (free, at most {NAME_BYTES_MAX}                      bytes)"
                )));
            }
        }
        if let Some(f) = self.fields.iter().find(|f| f.name.contains("__")) {
            return Err(err(format!(
                "column name `{}` contains `__`, which is reserved for the ORM's derived columns",
                f.name
            )));
        }
        let has_counter = self
            .fields
            .iter()
            .any(|f| f.field_type == FieldType::Counter);
        if has_counter && (!self.local_indexes.is_empty() || !self.search.is_empty()) {
            return Err(err(
                "a table with counters cannot have local indexes or search columns".into(),
            ));
        }
        if has_counter && self.ttl_seconds.is_some() {
            return Err(err("a table with counters cannot have a TTL".into()));
        }
        if has_counter {
            if let Some(f) = self
                .fields
                .iter()
                .find(|f| f.field_type != FieldType::Counter && !keys.contains(&f.name.as_str()))
            {
                return Err(err(format!(
                    "column `{}` is not a counter, but a table with counters may only have key columns and counter \
                     columns (put counters in their own entity)",
                    f.name
                )));
            }
            if !self.indexes.is_empty() {
                return Err(err(
                    "a table with counters cannot have secondary indexes".into()
                ));
            }
        }
        let mut fields = self.fields.clone();
        for f in &mut fields {
            f.deterministic = f.field_type.is_encrypted()
                && (keys.contains(&f.name.as_str())
                    || self.indexes.contains(&f.name)
                    || self.local_indexes.contains(&f.name));
        }
        let mut columns: Vec<ColumnDef> = fields
            .iter()
            .map(|f| ColumnDef {
                name: f.name.clone(),
                column_type: f.field_type.column_type(),
            })
            .collect();
        for c in &self.search {
            columns.push(ColumnDef {
                name: search_column(c),
                column_type: ColumnType::Text,
            });
        }
        let table = TableSchema {
            name: self.name.clone(),
            columns,
            partition_key: self.partition_key.clone(),
            clustering: self.clustering.clone(),
            indexes: self.indexes.clone(),
            local_indexes: self.local_indexes.clone(),
            search: self.search.clone(),
        };
        Ok(EntitySchema {
            fields,
            table,
            ttl_seconds: self.ttl_seconds,
        })
    }
}

/// The short form of a declaration: expands to the [`SchemaBuilder`] calls (validated the same way at start-up).
/// Column types are [`FieldType`] variants, orders are [`Order`] variants; `(generated)` marks a generated key;
/// `local_indexes: [..]` and `search: [..]` (optional, after `indexes`) expand to `.local_index` and `.search`.
///
/// ```
/// use shardcast::orm::{EntitySchema, FieldType, Order};
/// let short = shardcast::entity_schema! {
///     table: "messages",
///     columns: { channel_id: Uuid, id: TimeUuid(generated), author: Text, body: EncryptedText },
///     partition_key: [channel_id],
///     clustering: [id Desc],
///     indexes: [author],
/// };
/// let long = EntitySchema::builder("messages")
///     .column("channel_id", FieldType::Uuid)
///     .column("id", FieldType::TimeUuid).generated()
///     .column("author", FieldType::Text)
///     .column("body", FieldType::EncryptedText)
///     .partition_key(&["channel_id"])
///     .clustering("id", Order::Desc)
///     .index("author");
/// assert_eq!(short.build(), long.build());
/// ```
#[macro_export]
macro_rules! entity_schema {
    (
        table: $table:literal,
        columns: { $($col:ident : $ty:ident $(($gen:ident))?),+ $(,)? },
        partition_key: [$($pk:ident),+ $(,)?]
        $(, clustering: [$($ck:ident $ord:ident),* $(,)?])?
        $(, indexes: [$($ix:ident),* $(,)?])?
        $(, local_indexes: [$($lx:ident),* $(,)?])?
        $(, search: [$($sx:ident),* $(,)?])?
        $(,)?
    ) => {{
        let b = $crate::orm::EntitySchema::builder($table);
        $(
            let b = b.column(stringify!($col), $crate::orm::FieldType::$ty);
            $( let b = b.$gen(); )?
        )+
        let b = b.partition_key(&[$(stringify!($pk)),+]);
        $($( let b = b.clustering(stringify!($ck), $crate::orm::Order::$ord); )*)?
        $($( let b = b.index(stringify!($ix)); )*)?
        $($( let b = b.local_index(stringify!($lx)); )*)?
        $($( let b = b.search(stringify!($sx)); )*)?
        b
    }};
}

/// A TTL as whole seconds (rounded up), if it is within 1 s ..= [`TTL_SECONDS_MAX`].
pub fn ttl_seconds(ttl: std::time::Duration) -> Option<u32> {
    let ms = ttl.as_millis();
    let s = ms.div_ceil(1000);
    (1..=u128::from(TTL_SECONDS_MAX))
        .contains(&s)
        .then_some(s as u32)
}

/// What a hook knows about the write it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookContext {
    /// The IO shard's clock when the write started, in milliseconds since the Unix epoch (use it for timestamps).
    pub now_ms: i64,
}

/// The error a hook returns to abort its write; the caller gets [`crate::orm::OrmError::Hook`] with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HookError(pub String);

impl HookError {
    /// A hook error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// A type stored by a [`crate::orm::Repository`]: a serde struct whose fields are the declared columns.
///
/// The hooks run on the IO shard, inside the write, right before the entity is turned into a row (so what they set is
/// validated, encrypted and stored like the rest); an `Err` aborts the write with [`crate::orm::OrmError::Hook`] and
/// nothing is written. They behave the same on every backend.
pub trait Entity: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The declaration (validated when a repository opens).
    fn schema() -> SchemaBuilder;

    /// Runs before an insert (a create-if-absent write) of `self`.
    fn before_insert(&mut self, ctx: &HookContext) -> Result<(), HookError> {
        let _ = ctx;
        Ok(())
    }

    /// Runs before an upsert (`save`, `save_all`, `save_with_ttl`) of `self`.
    fn before_upsert(&mut self, ctx: &HookContext) -> Result<(), HookError> {
        let _ = ctx;
        Ok(())
    }

    /// Runs before a `patch` with the fields about to be written (it may add, change or remove fields).
    fn before_update(patch: &mut crate::orm::Patch, ctx: &HookContext) -> Result<(), HookError> {
        let _ = (patch, ctx);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SchemaBuilder {
        EntitySchema::builder("things")
            .column("a", FieldType::Uuid)
            .column("b", FieldType::Number)
            .column("c", FieldType::Text)
    }

    fn message(b: SchemaBuilder) -> String {
        b.build().expect_err("invalid").to_string()
    }

    #[test]
    fn valid_schema_builds_and_marks_deterministic_columns() {
        let s = base()
            .column("secret", FieldType::EncryptedText)
            .column("email", FieldType::EncryptedText)
            .partition_key(&["a"])
            .clustering("b", Order::Desc)
            .index("email")
            .build()
            .expect("valid");
        assert!(!s.field("secret").expect("field").deterministic);
        assert!(s.field("email").expect("field").deterministic);
        assert_eq!(s.table.column_type("email"), Some(ColumnType::Blob));
    }

    #[test]
    fn local_indexes_search_and_ttl_are_validated() {
        let s = base()
            .column("name", FieldType::Text)
            .partition_key(&["a"])
            .clustering("b", Order::Asc)
            .local_index("c")
            .search("name")
            .ttl(std::time::Duration::from_millis(1500))
            .build()
            .expect("valid");
        assert_eq!(s.ttl_seconds, Some(2), "rounded up to whole seconds");
        assert_eq!(s.table.local_indexes, vec!["c".to_string()]);
        assert_eq!(s.table.column_type("name__lc"), Some(ColumnType::Text));
        assert!(
            s.field("name__lc").is_none(),
            "the derived column is not an entity field"
        );
        let keyed = base().partition_key(&["a"]);
        assert!(message(keyed.clone().local_index("a")).contains("key column"));
        assert!(message(keyed.clone().local_index("zz")).contains("not a declared column"));
        assert!(message(keyed.clone().local_index("c").index("c")).contains("global and a local"));
        assert!(message(keyed.clone().search("b")).contains("plain (not encrypted) text"));
        assert!(message(keyed.clone().search("c").search("c")).contains("twice"));
        assert!(message(keyed.clone().column("x__lc", FieldType::Text)).contains("reserved"));
        assert!(message(keyed.clone().ttl(std::time::Duration::ZERO)).contains("ttl"));
        assert!(
            message(keyed.ttl(std::time::Duration::from_secs(
                u64::from(TTL_SECONDS_MAX) + 1
            )))
            .contains("ttl")
        );
        assert!(
            message(
                EntitySchema::builder("n")
                    .column("a", FieldType::Uuid)
                    .column("n", FieldType::Counter)
                    .partition_key(&["a"])
                    .ttl(std::time::Duration::from_secs(5))
            )
            .contains("counters cannot have a TTL")
        );
    }

    #[test]
    fn short_form_declares_local_indexes_and_search() {
        let short = crate::entity_schema! {
            table: "files",
            columns: { company: Uuid, id: Uuid, parent: Text, name: Text },
            partition_key: [company],
            clustering: [id Asc],
            local_indexes: [parent],
            search: [name],
        };
        let long = EntitySchema::builder("files")
            .column("company", FieldType::Uuid)
            .column("id", FieldType::Uuid)
            .column("parent", FieldType::Text)
            .column("name", FieldType::Text)
            .partition_key(&["company"])
            .clustering("id", Order::Asc)
            .local_index("parent")
            .search("name");
        assert_eq!(short.build(), long.build());
    }

    #[test]
    fn invalid_schemas_give_clear_errors() {
        assert!(message(base()).contains("partition key is empty"));
        assert!(message(base().partition_key(&["zz"])).contains("`zz` is not a declared column"));
        assert!(
            message(base().partition_key(&["a"]).clustering("a", Order::Asc)).contains("twice")
        );
        assert!(
            message(base().column("j", FieldType::Json).partition_key(&["j"]))
                .contains("cannot be a key")
        );
        assert!(
            message(base().column("n", FieldType::Counter).partition_key(&["a"]))
                .contains("not a counter")
        );
        assert!(
            message(base().column("A", FieldType::Text).partition_key(&["a"]))
                .contains("declared twice")
        );
        assert!(
            message(
                base()
                    .column("x", FieldType::Text)
                    .generated()
                    .partition_key(&["a"])
            )
            .contains("generated")
        );
        assert!(
            message(base().partition_key(&["a"]).index("a")).contains("needs no secondary index")
        );
        assert!(
            message(
                EntitySchema::builder("bad-name")
                    .column("a", FieldType::Text)
                    .partition_key(&["a"])
            )
            .contains("table name")
        );
        assert!(
            message(
                base()
                    .column("bl", FieldType::Blob)
                    .partition_key(&["a"])
                    .clustering("bl", Order::Asc)
            )
            .contains("clustering columns must be")
        );
    }
}
