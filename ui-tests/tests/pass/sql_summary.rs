// The SQL-summary job of DESIGN.md with stub types: `Result` outputs, `after`, a context parameter
// and a helper method.
use jobgraph::{StepContext, job};

#[derive(Debug, thiserror::Error)]
#[error("database error: {0}")]
pub struct DbError(String);

#[derive(Debug, thiserror::Error)]
#[error("not authorized")]
pub struct AuthError;

#[derive(Debug, thiserror::Error)]
#[error("mail not sent")]
pub struct MailError;

pub struct Connection {
    dsn: String,
}

pub struct TableClient {
    table: String,
}

#[derive(Debug, PartialEq)]
pub struct Rows(Vec<String>);

#[derive(Debug, PartialEq)]
pub struct Summary {
    rows: usize,
}

pub struct SqlSummary {
    dsn: String,
}

#[job]
impl SqlSummary {
    /// Opens the connection.
    #[step]
    async fn get_connection(&self) -> Result<Connection, DbError> {
        if self.dsn.is_empty() {
            return Err(DbError("no dsn".to_owned()));
        }
        Ok(Connection {
            dsn: self.dsn.clone(),
        })
    }

    #[step]
    async fn check_auth(&self) -> Result<(), AuthError> {
        Ok(())
    }

    #[step]
    async fn get_table_client1(&self, get_connection: &Connection) -> Result<TableClient, DbError> {
        Ok(self.client(get_connection, "t1"))
    }

    #[step]
    async fn get_table_client2(&self, get_connection: &Connection) -> Result<TableClient, DbError> {
        Ok(self.client(get_connection, "t2"))
    }

    #[step(after(check_auth))]
    async fn query_table1(&self, get_table_client1: &TableClient) -> Result<Rows, DbError> {
        Ok(Rows(vec![get_table_client1.table.clone()]))
    }

    #[step(after(check_auth))]
    async fn query_table2(&self, get_table_client2: &TableClient) -> Result<Rows, DbError> {
        Ok(Rows(vec![
            get_table_client2.table.clone(),
            get_table_client2.table.clone(),
        ]))
    }

    #[step]
    async fn summarize(&self, query_table1: &Rows, query_table2: &Rows) -> Summary {
        Summary {
            rows: query_table1.0.len() + query_table2.0.len(),
        }
    }

    #[step(after(summarize))]
    async fn email_notification(&self, ctx: &StepContext) -> Result<String, MailError> {
        Ok(format!("{}/{}", ctx.job_name(), ctx.step_name()))
    }

    fn client(&self, connection: &Connection, table: &str) -> TableClient {
        TableClient {
            table: format!("{}.{table}", connection.dsn),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let job = SqlSummary {
        dsn: "db".to_owned(),
    };
    let out = job.run().await.unwrap();
    assert_eq!(out.summarize, Summary { rows: 3 });
    assert_eq!(out.query_table1, Rows(vec!["db.t1".to_owned()]));
    assert_eq!(out.email_notification, "SqlSummary/email_notification");
    assert_eq!(SqlSummary::STEPS.len(), 8);
    assert!(SqlSummary::DOT.contains("\"check_auth\" -> \"query_table1\" [style=dashed];"));

    // `.unwrap_err()`, not `.unwrap_err()`: the outputs struct is not `Debug`.
    let error = SqlSummary { dsn: String::new() }.run().await.unwrap_err();
    assert_eq!(error.step(), SqlSummaryStep::GetConnection);
    assert!(error.skipped().contains(&SqlSummaryStep::Summarize));
}
