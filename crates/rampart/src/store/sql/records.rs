//! [`Store`] for this backend: each operation is written in the file of its seam.

use std::sync::Arc;

use async_trait::async_trait;

use super::{SqlStore, accounts, audit, credentials, users};
use crate::chain::{AuditRecord, NewAuditEntry};
use crate::store::{
    AccountPatch, ApiKey, AuditFilter, AuditItem, ChainRecord, NewUser, SealedKind, SealedValue,
    Store, StoreResult, TradingAccount, User, UserPatch,
};

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, user: NewUser, audit: NewAuditEntry) -> StoreResult<User> {
        users::create_user(self, user, audit).await
    }

    async fn user_by_id(&self, id: i64) -> StoreResult<Option<User>> {
        users::user_by_id(self, id).await
    }

    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        users::user_by_username(self, username).await
    }

    async fn list_users(&self, limit: i64, offset: i64) -> StoreResult<(Vec<User>, i64)> {
        users::list_users(self, limit, offset).await
    }

    async fn upgrade_password_hash(&self, id: i64, old: &str, new: &str) -> StoreResult<()> {
        users::upgrade_password_hash(self, id, old, new).await
    }

    async fn change_password(
        &self,
        id: i64,
        hash: &str,
        audit: NewAuditEntry,
        revoke_api_keys: Option<NewAuditEntry>,
    ) -> StoreResult<Vec<i64>> {
        users::change_password(self, id, hash, audit, revoke_api_keys).await
    }

    async fn update_user(
        &self,
        id: i64,
        patch: UserPatch,
        audit: Vec<NewAuditEntry>,
    ) -> StoreResult<User> {
        users::update_user(self, id, patch, audit).await
    }

    async fn delete_user(&self, id: i64, audit: NewAuditEntry) -> StoreResult<()> {
        users::delete_user(self, id, audit).await
    }

    async fn append_audit(&self, entry: NewAuditEntry) -> StoreResult<()> {
        audit::append_audit(self, entry).await
    }

    fn append_audit_later(&self, entry: NewAuditEntry) {
        // The writer appends through a copy of this store without the queue, so that the
        // queue closes (and the writer ends) when the last handle to the store is gone.
        self.writer.queue(entry, || Arc::new(self.without_writer()));
    }

    async fn flush_audit(&self) {
        self.writer.flush().await;
    }

    async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        audit::list_audit(self, filter).await
    }

    async fn audit_page(&self, after_id: i64, limit: i64) -> StoreResult<Vec<AuditRecord>> {
        audit::audit_page(self, after_id, limit).await
    }

    async fn purge_audit(&self, before: i64, entry: NewAuditEntry) -> StoreResult<u64> {
        audit::purge_audit(self, before, entry).await
    }

    async fn audit_chain(&self) -> StoreResult<Vec<ChainRecord>> {
        audit::audit_chain(self).await
    }

    async fn audit_snapshot(
        &self,
        visit: &mut (dyn FnMut(AuditItem) -> bool + Send),
    ) -> StoreResult<()> {
        audit::audit_snapshot(self, visit).await
    }

    async fn create_api_key(
        &self,
        key: ApiKey,
        max: i64,
        audit: NewAuditEntry,
    ) -> StoreResult<ApiKey> {
        credentials::create_api_key(self, key, max, audit).await
    }

    async fn api_keys_of(&self, user_id: i64) -> StoreResult<Vec<ApiKey>> {
        credentials::api_keys_of(self, user_id).await
    }

    async fn api_key_by_prefix(&self, prefix: &str) -> StoreResult<Option<ApiKey>> {
        credentials::api_key_by_prefix(self, prefix).await
    }

    async fn credential_change_head(&self) -> StoreResult<i64> {
        credentials::credential_change_head(self).await
    }

    async fn credential_changes_after(
        &self,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, i64)>> {
        credentials::credential_changes_after(self, after, limit).await
    }

    async fn delete_api_key(&self, user_id: i64, id: i64, audit: NewAuditEntry) -> StoreResult<()> {
        credentials::delete_api_key(self, user_id, id, audit).await
    }

    async fn delete_api_keys_of(
        &self,
        user_id: i64,
        audit: NewAuditEntry,
    ) -> StoreResult<Vec<i64>> {
        credentials::delete_api_keys_of(self, user_id, audit).await
    }

    async fn create_account(
        &self,
        account: TradingAccount,
        max: i64,
        audit: NewAuditEntry,
    ) -> StoreResult<TradingAccount> {
        accounts::create_account(self, account, max, audit).await
    }

    async fn accounts_of(&self, user_id: i64) -> StoreResult<Vec<TradingAccount>> {
        accounts::accounts_of(self, user_id).await
    }

    async fn account(&self, user_id: i64, id: i64) -> StoreResult<Option<TradingAccount>> {
        accounts::account(self, user_id, id).await
    }

    async fn update_account(
        &self,
        user_id: i64,
        id: i64,
        patch: AccountPatch,
        audit: NewAuditEntry,
    ) -> StoreResult<TradingAccount> {
        accounts::update_account(self, user_id, id, patch, audit).await
    }

    async fn delete_account(&self, user_id: i64, id: i64, audit: NewAuditEntry) -> StoreResult<()> {
        accounts::delete_account(self, user_id, id, audit).await
    }

    async fn sealed_values(
        &self,
        kind: SealedKind,
        after_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<SealedValue>> {
        credentials::sealed_values(self, kind, after_id, limit).await
    }

    async fn reseal(&self, kind: SealedKind, id: i64, old: &str, new: &str) -> StoreResult<bool> {
        credentials::reseal(self, kind, id, old, new).await
    }

    #[cfg(any(test, feature = "test-util"))]
    async fn tamper_sealed_for_test(
        &self,
        kind: SealedKind,
        id: i64,
        value: &str,
    ) -> StoreResult<()> {
        credentials::tamper_sealed_for_test(self, kind, id, value).await
    }

    #[cfg(any(test, feature = "test-util"))]
    async fn tamper_audit_for_test(&self, id: i64, details: &str) -> StoreResult<()> {
        audit::tamper_audit_for_test(self, id, details).await
    }
}
