/// Migration states; raw values are enum mk_status.
package enum MigrationStatus: Int32, Sendable {
    case none = 0, setup, active, device, completed, failed, cancelling, cancelled

    package var name: String {
        switch self {
        case .none: "none"
        case .setup: "setup"
        case .active: "active"
        case .device: "device"
        case .completed: "completed"
        case .failed: "failed"
        case .cancelling: "cancelling"
        case .cancelled: "cancelled"
        }
    }

    var isTerminal: Bool { self == .completed || self == .failed || self == .cancelled }
}
