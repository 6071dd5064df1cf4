/// Log levels; raw values are enum mk_log_level.
public enum LogLevel: Int32, Sendable {
    case error = 0, warn, info, debug
}
