import CShim

extension mk_stats {
    /// Copy a snapshot into the C struct (all fields; the caller trims to the
    /// consumer's struct_size).
    mutating func fill(from s: MigrationStats) {
        struct_size = UInt32(MemoryLayout<mk_stats>.size)
        status = s.status.rawValue
        error = s.error
        cpu_throttle_percentage = s.cpuThrottlePercentage
        total_time_ms = s.totalTimeMs
        setup_time_ms = s.setupTimeMs
        downtime_ms = s.downtimeMs
        expected_downtime_ms = s.expectedDowntimeMs
        downtime_limit_ms = s.downtimeLimitMs
        ram_transferred = s.transferred
        ram_remaining = s.remaining
        ram_total = s.total
        ram_duplicate = s.duplicate
        ram_normal = s.normal
        ram_normal_bytes = s.normalBytes
        ram_dirty_sync_count = s.dirtySyncCount
        ram_dirty_pages_rate = s.dirtyPagesRate
        ram_page_size = MigrationParameters.pageSize
        ram_mbps = s.mbps
        passes = s.passes
        bandwidth_estimate = s.bandwidthEstimate
        bandwidth_source = s.bandwidthSource.rawValue
        switchover_source = s.switchoverSource.rawValue
        switchover_bandwidth = s.switchoverBandwidth
        pending_ram_bytes = s.remaining
        pending_device_bytes = s.pendingDeviceBytes
        device_state_bytes = s.deviceStateBytes
        stop_pause_us = s.stop.pauseUs
        stop_sync_us = s.stop.syncUs
        stop_ram_us = s.stop.ramUs
        stop_ram_bytes = s.stop.ramBytes
        stop_device_us = s.stop.deviceUs
        stop_flush_us = s.stop.flushUs
        downtime_us = s.stop.totalUs
        aborted_switchovers = s.abortedSwitchovers
        expected_ram_us = s.expected.ramUs
        expected_backlog_us = s.expected.backlogUs
        expected_device_us = s.expected.deviceUs
        expected_dest_us = s.expected.destinationUs
        expected_fixed_us = s.expected.fixedUs
        expected_margin_us = s.expected.marginUs
        downtime_target_ms = s.downtimeTargetMs
        switchover_reason = s.switchoverReason.rawValue
        backlog_bytes = s.backlogBytes
        rtt_us = s.rttUs
        dest_resume_us = s.destResumeUs
        pipeline_bandwidth = s.pipelineBandwidth
        throttle_sleep_us = s.throttleSleepUs
        throttle_mode = Int32(bitPattern: s.throttleMode == .step ? MK_THROTTLE_STEP.rawValue : MK_THROTTLE_CLOSED_LOOP.rawValue)
        nr_vcpus = UInt32(s.vcpus.count)
        stop_cpu_wait_us = s.stop.cpuWaitUs ?? .max
    }
}

extension mk_vcpu_stats {
    init(_ v: VCPUStats, index: UInt32) {
        self = CStruct.fresh(mk_vcpu_stats())
        vcpu = index
        throttle_percentage = v.throttlePercent
        dirty_rate_known = v.dirtyRateKnown ? 1 : 0
        dirty_pages_rate = v.dirtyPagesRate
        dirty_pages = v.dirtyPages
        throttle_sleep_us = v.throttleSleepUs
    }
}

extension mk_dest_stats {
    init(_ s: DestStats) {
        self = CStruct.fresh(mk_dest_stats())
        status = s.status.rawValue
        error = s.error
        if let ls = s.loader {
            bytes_received = ls.bytes
            pages_loaded = ls.pagesLoaded
            zero_pages = ls.zeroPages
            records = ls.records
            device_state_bytes = ls.deviceStateBytes
            zero_load_us = ls.zeroNs / 1000
            zero_pages_cleared = ls.zeroPagesCleared
        }
        device_load_us = s.deviceLoadUs
        end_to_ack_us = s.endToAckUs
        prefault_us = s.prefaultUs
        total_time_ms = s.totalTimeMs
        stopped_cpu_wait_us = s.stoppedCpuWaitUs ?? .max
    }
}

extension SwitchoverReason {
    var name: String {
        switch self {
        case .none: "none"
        case .target: "target"
        case .noGain: "no-gain"
        case .timeout: "timeout"
        }
    }
}

extension BandwidthSource {
    var name: String {
        switch self {
        case .none: "none"
        case .link: "link"
        case .throughput: "throughput"
        case .override: "override"
        case .pipeline: "pipeline"
        }
    }
}

extension MigrationStats {
    /// One JSON object with query-migrate's names, plus ours. Hand-built:
    /// the library carries no Foundation.
    public var json: String {
        var o = JSONObject()
        o.add("status", string: status.name)
        o.add("total-time", totalTimeMs)
        o.add("setup-time", setupTimeMs)
        if status == .completed { o.add("downtime", downtimeMs) }
        o.add("expected-downtime", expectedDowntimeMs)
        o.add("downtime-limit", downtimeLimitMs)
        o.add("downtime-target", downtimeTargetMs)
        o.add("switchover-reason", string: switchoverReason.name)
        var parts = JSONObject()
        parts.add("ram-us", expected.ramUs)
        parts.add("backlog-us", expected.backlogUs)
        parts.add("device-us", expected.deviceUs)
        parts.add("dest-us", expected.destinationUs)
        parts.add("fixed-us", expected.fixedUs)
        parts.add("margin-us", expected.marginUs)
        o.add("expected-downtime-parts", object: parts)
        o.add("cpu-throttle-percentage", UInt64(cpuThrottlePercentage))
        o.add("throttle-mode", string: throttleMode.name)
        o.add("throttle-sleep-us", throttleSleepUs)
        var list: [JSONObject] = []
        for (i, v) in vcpus.enumerated() {
            var j = JSONObject()
            j.add("vcpu", UInt64(i))
            j.add("cpu-throttle-percentage", UInt64(v.throttlePercent))
            if v.dirtyRateKnown {
                j.add("dirty-pages-rate", v.dirtyPagesRate)
                j.add("dirty-pages", v.dirtyPages)
            } else {
                j.addNull("dirty-pages-rate")
                j.addNull("dirty-pages")
            }
            j.add("throttle-sleep-us", v.throttleSleepUs)
            list.append(j)
        }
        o.add("vcpus", array: list)
        var ram = JSONObject()
        ram.add("transferred", transferred)
        ram.add("remaining", remaining)
        ram.add("total", total)
        ram.add("duplicate", duplicate)
        ram.add("normal", normal)
        ram.add("normal-bytes", normalBytes)
        ram.add("dirty-sync-count", dirtySyncCount)
        ram.add("dirty-pages-rate", dirtyPagesRate)
        ram.add("mbps", double: mbps)
        ram.add("page-size", MigrationParameters.pageSize)
        ram.add("passes", passes)
        o.add("ram", object: ram)
        o.add("bandwidth-estimate", bandwidthEstimate)
        o.add("bandwidth-source", string: bandwidthSource.name)
        o.add("switchover-bandwidth", switchoverBandwidth)
        o.add("switchover-source", string: switchoverSource.name)
        o.add("pending-device-bytes", pendingDeviceBytes)
        o.add("device-state-bytes", deviceStateBytes)
        o.add("aborted-switchovers", abortedSwitchovers)
        o.add("backlog-bytes", backlogBytes)
        o.add("pipeline-bandwidth", pipelineBandwidth)
        o.add("rtt-us", rttUs)
        if status == .completed { o.add("dest-resume-us", destResumeUs) }
        var sc = JSONObject()
        sc.add("pause-us", stop.pauseUs)
        sc.add("sync-us", stop.syncUs)
        sc.add("ram-us", stop.ramUs)
        sc.add("ram-bytes", stop.ramBytes)
        sc.add("device-us", stop.deviceUs)
        sc.add("flush-us", stop.flushUs)
        sc.add("total-us", stop.totalUs)
        if let wait = stop.cpuWaitUs { sc.add("cpu-wait-us", wait) }
        o.add("stop-copy", object: sc)
        if error != 0 {
            o.add("error", Int64(error))
            o.add("error-desc", string: errorMessage)
        }
        return o.text
    }
}

/// Minimal JSON writer: keys in insertion order, numbers and strings.
struct JSONObject {
    private var parts: [String] = []

    mutating func add(_ key: String, _ v: UInt64) { parts.append("\(quote(key)):\(v)") }
    mutating func add(_ key: String, _ v: Int64) { parts.append("\(quote(key)):\(v)") }
    mutating func add(_ key: String, double v: Double) {
        let r = (v * 100).rounded() / 100
        parts.append("\(quote(key)):\(r.isFinite ? "\(r)" : "0")")
    }
    mutating func add(_ key: String, string v: String) { parts.append("\(quote(key)):\(quote(v))") }
    mutating func add(_ key: String, object v: JSONObject) { parts.append("\(quote(key)):\(v.text)") }
    mutating func add(_ key: String, array v: [JSONObject]) {
        parts.append("\(quote(key)):[" + v.map(\.text).joined(separator: ",") + "]")
    }
    mutating func addNull(_ key: String) { parts.append("\(quote(key)):null") }

    var text: String { "{" + parts.joined(separator: ",") + "}" }

    private func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let h = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
