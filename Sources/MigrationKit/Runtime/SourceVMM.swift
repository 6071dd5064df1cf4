/// The source VMM's callbacks other than the transport, as Swift closures:
/// CAPI builds them from mk_source_callbacks, tests from anything. Each
/// returns what the callback returned (negative: it failed); optional ones
/// are nil when the VMM did not set them.
struct SourceVMM: Sendable {
    var getDirtyLog: @Sendable (_ region: UInt32, _ bitmap: UnsafeMutablePointer<UInt64>, _ pages: UInt64) -> Int32
    var pauseVCPUs: @Sendable () -> Int32
    var resumeVCPUs: @Sendable () -> Int32
    /// Called on the throttle thread.
    var kickVCPU: (@Sendable (_ vcpu: UInt32) -> Void)?
    var getVCPUDirtyCounts: (@Sendable (_ counts: UnsafeMutablePointer<UInt64>, _ vcpus: UInt32) -> Int32)?
    var saveDeviceState: (@Sendable (DeviceBuffer) -> Int32)?
    var deviceStateSize: (@Sendable () -> UInt64)?
    var log: (@Sendable (LogLevel, String) -> Void)?
    var progress: (@Sendable (MigrationStats) -> Void)?
}
