/// Log levels; raw values are enum mk_log_level.
package enum LogLevel: Int32, Sendable {
    case error = 0, warn, info, debug
}
