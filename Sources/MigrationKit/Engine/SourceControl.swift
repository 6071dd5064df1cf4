/// The part of a source migration other threads touch: parameters set while
/// running, the cancel request, and the published stats snapshot. All of it
/// behind one lock; the migration thread keeps everything else to itself.
package final class SourceControl: Sendable {
    private struct State {
        var params: MigrationParameters
        var paramsGeneration = 0
        var cancelRequested = false
        var committed = false
        var stats = MigrationStats()
    }

    private let state: Locked<State>
    /// What this handle needs beyond MigrationParameters.validate (the C
    /// API: auto-converge needs the VMM's kick_vcpu).
    private let requirement: (@Sendable (MigrationParameters) throws(MKError) -> Void)?

    package init(params: MigrationParameters,
                requirement: (@Sendable (MigrationParameters) throws(MKError) -> Void)? = nil) {
        var s = State(params: params)
        s.stats.downtimeLimitMs = params.downtimeLimitMs
        state = Locked(s)
        self.requirement = requirement
    }

    func setParams(_ p: MigrationParameters) throws(MKError) {
        try p.validate()
        try requirement?(p)
        state.withLock {
            $0.params = p
            $0.paramsGeneration += 1
        }
    }

    /// Apply `change` to a copy of the current parameters, validate, store.
    package func updateParams(_ change: (inout MigrationParameters) throws(MKError) -> Void) throws(MKError) {
        var p = params
        try change(&p)
        try setParams(p)
    }

    package var params: MigrationParameters { state.withLock { $0.params } }

    /// Parameters with a generation number that changes on every set.
    func paramsIfChanged(since generation: Int) -> (MigrationParameters, Int)? {
        state.withLock { s in s.paramsGeneration == generation ? nil : (s.params, s.paramsGeneration) }
    }

    /// Returns false if the migration already ended.
    @discardableResult
    package func requestCancel() -> Bool {
        state.withLock { s in
            guard !s.stats.status.isTerminal, !s.committed else { return false }
            s.cancelRequested = true
            return true
        }
    }

    package var isCancelRequested: Bool { state.withLock { $0.cancelRequested } }

    /// The point of no return, taken just before the END record: from here
    /// the destination may run the guest, so cancel is refused. False if a
    /// cancel got in first.
    func commit() -> Bool {
        state.withLock { s in
            guard !s.cancelRequested else { return false }
            s.committed = true
            return true
        }
    }

    func publish(_ stats: MigrationStats) {
        state.withLock { $0.stats = stats }
    }

    /// The latest snapshot; a pending cancel shows as "cancelling".
    package func snapshot() -> MigrationStats {
        state.withLock { s in
            var st = s.stats
            if s.cancelRequested && !st.status.isTerminal && st.status != .none { st.status = .cancelling }
            return st
        }
    }
}
