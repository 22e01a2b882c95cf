//! `IoScope`: several repository operations run on the IO shard as **one** request.
//!
//! Every [`Repository`](super::Repository) method is one request: one push on the IO queue, one wake-up of the IO
//! thread, one answer that wakes the caller. A service that reads and then writes (check a channel, then store a
//! message in it) pays that twice. [`Orm::run`] runs a closure on the IO thread instead; inside it, the `*_in`
//! methods of a repository (`find_in`, `find_one_in`, `get_in`, `save_in`, `increment_in`) reach the backend directly,
//! so the whole sequence costs one crossing each way, and the caller's decision between the read and the write (the
//! access check) is taken where no other request can run in between on the embedded store (its reads and the queueing
//! of its writes do not yield).
//!
//! A scope is not a transaction: on MongoDB and Cassandra other requests interleave at every await, and each write is
//! committed on its own (embedded: with the group commit of its turn). Writes are acknowledged durable exactly as
//! through the repository's own methods.

use std::sync::Arc;

use super::backend::{Backend, BackendError, BoxFuture};
use super::entity::Entity;
use super::repository::{Find, FoundPage, Key, Orm, OrmError, OrmResult, Repository};

/// The backend as seen from inside [`Orm::run`]: pass it to a repository's `*_in` methods. Only exists on the IO
/// thread, for the duration of one request.
#[derive(Clone)]
pub struct IoScope {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for IoScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoScope")
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl IoScope {
    pub(super) fn backend(&self) -> &dyn Backend {
        &*self.backend
    }
}

impl Orm {
    /// Runs `f` on the IO shard as one request (see the module docs): its repository operations (`*_in`) share one
    /// round trip. Bounded by `request_timeout_ms` as a whole; fails with `Unavailable` like any request when the
    /// queue is full or the database is down, and an `Unavailable` error returned by `f` marks the database down
    /// exactly like one of a single operation. The returned future works on any executor.
    pub fn run<T, F>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = OrmResult<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(IoScope) -> BoxFuture<'static, OrmResult<T>> + Send + 'static,
    {
        let answer = self.io().call(move |backend| {
            Box::pin(async move {
                match f(IoScope { backend }).await {
                    // Surfaces to the IO shard's health tracking (fail fast while the database is down).
                    Err(OrmError::Backend(e @ BackendError::Unavailable(_))) => Err(e),
                    r => Ok(r),
                }
            })
        });
        async move { answer.await? }
    }
}

impl<E: Entity> Repository<E> {
    /// [`Repository::find`] inside [`Orm::run`].
    pub async fn find_in(&self, scope: &IoScope, find: Find) -> OrmResult<FoundPage<E>> {
        let Some(query) = self.build_query(find)? else {
            return Ok(FoundPage {
                entities: Vec::new(),
                next_page_token: None,
            });
        };
        let page = scope.backend().query(&self.schema.table, &query).await?;
        self.found_page(page)
    }

    /// [`Repository::find_one`] inside [`Orm::run`].
    pub async fn find_one_in(&self, scope: &IoScope, find: Find) -> OrmResult<Option<E>> {
        Ok(self
            .find_in(scope, find.limit(1))
            .await?
            .entities
            .into_iter()
            .next())
    }

    /// [`Repository::get`] inside [`Orm::run`].
    pub async fn get_in(&self, scope: &IoScope, key: Key) -> OrmResult<Option<E>> {
        let key = self.key_row(key)?;
        let row = scope.backend().get(&self.schema.table, &key).await?;
        row.map(|r| self.entity_of(r)).transpose()
    }

    /// [`Repository::save`] inside [`Orm::run`]: acknowledged (the future completes) once the write is durable.
    pub async fn save_in(&self, scope: &IoScope, entity: E) -> OrmResult<E> {
        let ttl = self.schema.ttl_seconds;
        let mut saved = self
            .save_rows_on(scope.backend(), vec![entity], ttl)
            .await?;
        saved
            .pop()
            .ok_or_else(|| self.invalid("save returned nothing".into()))
    }

    /// [`Repository::increment`] inside [`Orm::run`].
    pub async fn increment_in(
        &self,
        scope: &IoScope,
        key: Key,
        column: &str,
        delta: i64,
    ) -> OrmResult<()> {
        let key = self.counter_key(key, column)?;
        scope
            .backend()
            .increment(&self.schema.table, &key, column, delta)
            .await?;
        Ok(())
    }
}
