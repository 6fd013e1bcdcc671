//! Typed results for the semantic layer.
//!
//! Results describe protocol-level outcomes (miss, CAS mismatch, lease
//! state); transport and parse failures surface as
//! [`Error`](super::Error) instead. Values are raw bytes plus the stored
//! client flags; decoding belongs to the high-level layer.

/// Outcome of a [`Get`](super::Get) operation.
///
/// A vivified placeholder is recognized as "empty value plus a lease
/// flag". The protocol cannot distinguish that from a *genuinely stored*
/// empty value while a lease happens to be outstanding on it (a
/// `refresh_before` window, or an invalidation raced by this read), so
/// such a read reports `Miss`/`Pending` instead of a hit. Storing
/// non-empty values sidesteps the ambiguity entirely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GetStatus {
    /// The item was found (the value is present when it was requested).
    Hit,
    /// The item was not found. A lease read that vivified the key also
    /// reports `Miss`, paired with
    /// [`LeaseState::Granted`]: this client should fill the value.
    Miss,
    /// The item is a placeholder another client is currently filling.
    Pending,
    /// `unless_cas` matched, so the server suppressed the value.
    Unchanged,
}

/// Outcome of a mutation ([`Set`](super::Set) / [`Delete`](super::Delete) /
/// [`Arithmetic`](super::Arithmetic)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MutationStatus {
    /// The mutation took effect: the value was stored, the item deleted,
    /// or the counter adjusted.
    Applied,
    /// The item does not exist.
    NotFound,
    /// Add mode: the item already exists.
    AlreadyExists,
    /// `compare_cas` did not match the item.
    CasMismatch,
}

/// Freshness of a returned value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueState {
    Fresh,
    /// The item was invalidated and awaits a refresh.
    Stale,
    Missing,
}

/// Lease outcome of a [`Get`](super::Get) with `lease_ttl`/`refresh_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseState {
    /// No lease was requested or granted.
    None,
    /// This client won the lease and should recompute the value.
    Granted,
    /// Another client holds the lease.
    Busy,
}

/// Item metadata requested via [`Meta`](super::Meta); a field is `None` when
/// it was not requested or the server did not send it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ItemMeta {
    pub cas: Option<u64>,
    /// Remaining TTL in seconds; `-1` means unlimited.
    pub ttl: Option<i64>,
    pub size: Option<u64>,
    pub last_access: Option<u64>,
    pub hit_before: Option<bool>,
}

/// Result of a [`Get`](super::Get) operation.
///
/// `status`, `value_state` and `lease_state` mirror orthogonal wire
/// flags; the combinations that actually occur:
///
/// | case | `status` | `value_state` | `lease_state` |
/// |---|---|---|---|
/// | plain hit | `Hit` | `Fresh` | `None` |
/// | plain miss | `Miss` | `Missing` | `None` |
/// | lease read on a missing key, this client won | `Miss` | `Missing` | `Granted` |
/// | placeholder another client is filling | `Pending` | `Missing` | `Busy` |
/// | invalidated item, this client should refresh | `Hit` | `Stale` | `Granted` |
/// | invalidated item, another client is refreshing | `Hit` | `Stale` | `Busy` |
/// | `refresh_before` window, this client should refresh | `Hit` | `Fresh` | `Granted` |
/// | `unless_cas` matched | `Unchanged` | `Fresh` | `None` |
///
/// Rows with a value (`Hit`) can be served as-is, stale or not; recompute
/// only when [`won_lease`](Self::won_lease) is true, and store the fresh
/// value with `compare_cas` (a lease read fetches the CAS automatically)
/// so a concurrent delete or competing fill is not overwritten.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GetResult {
    pub key: Vec<u8>,
    pub status: GetStatus,
    /// The raw value; present only on a [`Hit`](GetStatus::Hit) that
    /// requested the value.
    pub value: Option<Vec<u8>>,
    /// The client flags stored with the item.
    pub client_flags: Option<u32>,
    pub item: ItemMeta,
    pub value_state: ValueState,
    pub lease_state: LeaseState,
}

impl GetResult {
    pub fn hit(&self) -> bool {
        self.status == GetStatus::Hit
    }

    pub fn is_stale(&self) -> bool {
        self.value_state == ValueState::Stale
    }

    /// This client won the lease and should recompute the value.
    pub fn won_lease(&self) -> bool {
        self.lease_state == LeaseState::Granted
    }

    /// Another client already holds the lease.
    pub fn lease_busy(&self) -> bool {
        self.lease_state == LeaseState::Busy
    }
}

/// Result of a [`Set`](super::Set) or [`Delete`](super::Delete) operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MutationResult {
    pub key: Vec<u8>,
    pub status: MutationStatus,
    /// The new item CAS, when requested with `return_cas`.
    pub cas: Option<u64>,
}

impl MutationResult {
    /// Whether the mutation took effect.
    pub fn applied(&self) -> bool {
        self.status == MutationStatus::Applied
    }
}

/// Result of an [`Arithmetic`](super::Arithmetic) operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArithmeticResult {
    pub key: Vec<u8>,
    pub status: MutationStatus,
    /// The counter value after the operation, unless suppressed.
    pub value: Option<u64>,
    pub item: ItemMeta,
}

impl ArithmeticResult {
    /// Whether the delta was applied (or the counter vivified).
    pub fn applied(&self) -> bool {
        self.status == MutationStatus::Applied
    }
}

/// Result of an [`Op`](super::Op) in a batch, one variant per operation
/// kind ([`Set`](super::Set) and [`Delete`](super::Delete) both yield
/// `Mutation`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpResult {
    Get(GetResult),
    Mutation(MutationResult),
    Arithmetic(ArithmeticResult),
}

impl OpResult {
    pub fn as_get(&self) -> Option<&GetResult> {
        match self {
            OpResult::Get(result) => Some(result),
            _ => None,
        }
    }

    pub fn as_mutation(&self) -> Option<&MutationResult> {
        match self {
            OpResult::Mutation(result) => Some(result),
            _ => None,
        }
    }

    pub fn as_arithmetic(&self) -> Option<&ArithmeticResult> {
        match self {
            OpResult::Arithmetic(result) => Some(result),
            _ => None,
        }
    }
}
