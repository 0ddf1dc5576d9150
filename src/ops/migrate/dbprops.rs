//! What belongs to a database itself rather than to its contents, and so is not in its
//! dump unless restored with `--create`: owner, ACL, `ALTER DATABASE … SET` and
//! `ALTER ROLE … IN DATABASE … SET` settings, connection limit, comment, default
//! tablespace, whether it accepts connections.
//!
//! `migrate` reads them before the migration runs and gives them to the restored copy
//! before it takes the database's name; reading them back afterwards proves the copy
//! has exactly what the original had.

use anyhow::Context;
use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::sql::{ident, literal};

/// One privilege of the database's ACL, in ACL order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub grantor: String,
    /// `None` = PUBLIC.
    pub grantee: Option<String>,
    pub privilege: String,
    pub grantable: bool,
}

/// Settings for the database (`role: None`) or for one role in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub role: Option<String>,
    /// `name=value`, as `pg_db_role_setting.setconfig` holds them.
    pub config: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbProps {
    pub owner: String,
    /// `pg_database.datacl` as text (`None`: the default privileges).
    pub acl_text: Option<String>,
    pub acl: Vec<Grant>,
    pub connection_limit: i32,
    pub comment: Option<String>,
    pub tablespace: String,
    pub allow_connections: bool,
    pub settings: Vec<Settings>,
}

impl DbProps {
    /// The properties of database `db` (a user error when it does not exist).
    pub async fn read(client: &Client, db: &str) -> anyhow::Result<DbProps> {
        let row = client
            .query_opt(
                "SELECT d.oid, pg_get_userbyid(d.datdba), d.datacl::text, d.datconnlimit,
                        shobj_description(d.oid, 'pg_database'), t.spcname, d.datallowconn
                 FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace
                 WHERE d.datname = $1",
                &[&db],
            )
            .await
            .with_context(|| format!("read the properties of database {db}"))?
            .ok_or_else(|| crate::user_error!("database {db:?} does not exist"))?;
        let oid: u32 = row.get(0);
        let acl = client
            .query(
                "SELECT pg_get_userbyid(a.grantor),
                        CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
                        a.privilege_type, a.is_grantable
                 FROM pg_database d, aclexplode(d.datacl) WITH ORDINALITY a
                 WHERE d.oid = $1 ORDER BY a.ordinality",
                &[&oid],
            )
            .await
            .with_context(|| format!("read the privileges on database {db}"))?
            .iter()
            .map(|r| Grant {
                grantor: r.get(0),
                grantee: r.get(1),
                privilege: r.get(2),
                grantable: r.get(3),
            })
            .collect();
        let settings = client
            .query(
                "SELECT CASE WHEN setrole = 0 THEN NULL ELSE pg_get_userbyid(setrole) END, setconfig
                 FROM pg_db_role_setting WHERE setdatabase = $1
                 ORDER BY setrole = 0 DESC, 1",
                &[&oid],
            )
            .await
            .with_context(|| format!("read the settings of database {db}"))?
            .iter()
            .map(|r| Settings {
                role: r.get(0),
                config: r.get::<_, Option<Vec<String>>>(1).unwrap_or_default(),
            })
            .collect();
        Ok(DbProps {
            owner: row.get(1),
            acl_text: row.get(2),
            acl,
            connection_limit: row.get(3),
            comment: row.get(4),
            tablespace: row.get(5),
            allow_connections: row.get(6),
            settings,
        })
    }

    /// Give database `db` (fresh from a restore, nobody connected) these properties, then
    /// read them back: an error names what still differs.
    pub async fn apply(&self, client: &Client, db: &str) -> anyhow::Result<()> {
        let current = DbProps::read(client, db).await?;
        if current.tablespace != self.tablespace {
            // Moves the files; cannot run inside a transaction.
            client
                .batch_execute(&format!(
                    "ALTER DATABASE {} SET TABLESPACE {}",
                    ident(db),
                    ident(&self.tablespace)
                ))
                .await
                .with_context(|| format!("move database {db} to tablespace {}", self.tablespace))?;
        }
        let sql = self.statements(db, &current).join(";\n");
        client
            .batch_execute(&format!("BEGIN;\n{sql};\nCOMMIT"))
            .await
            .with_context(|| {
                format!("give database {db} the owner, privileges and settings of the original")
            })?;
        let now = DbProps::read(client, db).await?;
        if now != *self {
            anyhow::bail!(
                "database {db} does not have the original's properties after copying them: {}",
                differences(self, &now).join("; ")
            );
        }
        Ok(())
    }

    /// The statements that turn `current` (the restored copy's) into these properties.
    fn statements(&self, db: &str, current: &DbProps) -> Vec<String> {
        let d = ident(db);
        let mut s = vec![format!(
            "ALTER DATABASE {d} OWNER TO {}",
            ident(&self.owner)
        )];
        if self.acl_text.is_some() {
            // Start from nothing, then grant in the original's order: the ACL comes out
            // identical, item order included.
            s.push(format!("REVOKE ALL ON DATABASE {d} FROM PUBLIC"));
            s.push(format!(
                "REVOKE ALL ON DATABASE {d} FROM {}",
                ident(&self.owner)
            ));
            for g in &current.acl {
                if let Some(grantee) = &g.grantee {
                    if grantee != &self.owner {
                        s.push(format!(
                            "REVOKE ALL ON DATABASE {d} FROM {} CASCADE",
                            ident(grantee)
                        ));
                    }
                }
            }
            for g in &self.acl {
                let grant = format!(
                    "GRANT {} ON DATABASE {d} TO {}{}",
                    g.privilege,
                    g.grantee
                        .as_deref()
                        .map(ident)
                        .unwrap_or_else(|| "PUBLIC".into()),
                    if g.grantable {
                        " WITH GRANT OPTION"
                    } else {
                        ""
                    }
                );
                if g.grantor == self.owner {
                    s.push(grant);
                } else {
                    // Recorded as granted by whoever runs it (a superuser's grants are
                    // recorded as the owner's).
                    s.push(format!("SET LOCAL ROLE {}", ident(&g.grantor)));
                    s.push(grant);
                    s.push("RESET ROLE".into());
                }
            }
        }
        s.push(format!(
            "ALTER DATABASE {d} CONNECTION LIMIT {}",
            self.connection_limit
        ));
        s.push(format!(
            "COMMENT ON DATABASE {d} IS {}",
            self.comment
                .as_deref()
                .map(literal)
                .unwrap_or_else(|| "NULL".into())
        ));
        for set in &current.settings {
            s.push(match &set.role {
                None => format!("ALTER DATABASE {d} RESET ALL"),
                Some(r) => format!("ALTER ROLE {} IN DATABASE {d} RESET ALL", ident(r)),
            });
        }
        for set in &self.settings {
            let target = match &set.role {
                None => format!("ALTER DATABASE {d}"),
                Some(r) => format!("ALTER ROLE {} IN DATABASE {d}", ident(r)),
            };
            for kv in &set.config {
                let (name, value) = kv.split_once('=').unwrap_or((kv, ""));
                s.push(format!(
                    "{target} SET {} TO {}",
                    ident(name),
                    setting_value(name, value)
                ));
            }
        }
        if !self.allow_connections {
            s.push(format!("ALTER DATABASE {d} WITH ALLOW_CONNECTIONS false"));
        }
        s
    }
}

/// What differs between two sets of properties, for the operator.
fn differences(want: &DbProps, got: &DbProps) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what}: original {a}, copy {b}"));
        }
    };
    cmp("owner", want.owner.clone(), got.owner.clone());
    cmp(
        "privileges",
        format!("{:?}", want.acl_text),
        format!("{:?}", got.acl_text),
    );
    cmp(
        "connection limit",
        want.connection_limit.to_string(),
        got.connection_limit.to_string(),
    );
    cmp(
        "comment",
        format!("{:?}", want.comment),
        format!("{:?}", got.comment),
    );
    cmp(
        "tablespace",
        want.tablespace.clone(),
        got.tablespace.clone(),
    );
    cmp(
        "settings",
        format!("{:?}", want.settings),
        format!("{:?}", got.settings),
    );
    cmp(
        "allow connections",
        want.allow_connections.to_string(),
        got.allow_connections.to_string(),
    );
    out
}

/// Settings PostgreSQL stores as a list of quoted names (pg_dump's list: the variables
/// flagged `GUC_LIST_QUOTE`): each element must be given as its own literal, or the whole
/// list would become one element.
const LIST_QUOTE: &[&str] = &[
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// The SQL for a stored setting's value.
fn setting_value(name: &str, value: &str) -> String {
    if !LIST_QUOTE.contains(&name.to_ascii_lowercase().as_str()) {
        return literal(value);
    }
    let items = split_list(value);
    if items.is_empty() {
        return "''".into();
    }
    items
        .iter()
        .map(|i| literal(i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Split a stored list setting (`"$user", public, "a""b"`) into its elements, as
/// PostgreSQL's `SplitGUCList` does.
fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return out;
        }
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        item.push('"');
                    } else {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                item.push(*c);
                chars.next();
            }
            item = item.trim_end().to_string();
        }
        out.push(item);
        if chars.next().is_none() {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_settings_split_like_postgres() {
        for (stored, want) in [
            (r#""$user", public"#, vec!["$user", "public"]),
            (r#"a, "b ""c""", d"#, vec!["a", r#"b "c""#, "d"]),
            ("", vec![]),
            ("only", vec!["only"]),
        ] {
            assert_eq!(split_list(stored), want, "{stored}");
        }
        assert_eq!(
            setting_value("search_path", r#""$user", public"#),
            "'$user', 'public'"
        );
        assert_eq!(setting_value("statement_timeout", "5min"), "'5min'");
        assert_eq!(setting_value("application_name", "it's"), "'it''s'");
    }
}
