// swift-tools-version:6.0
import PackageDescription

// The shipped .so carries the Swift runtime inside it (no Swift library needed
// at run time). MK_DYNAMIC_SWIFT_RUNTIME=1 links the toolchain's shared runtime
// instead, for debugging only.
let staticRuntime = Context.environment["MK_DYNAMIC_SWIFT_RUNTIME"] == nil
// MK_SANITIZER_BUILD=1 (scripts/sanitize.sh): the sanitizer runtime comes
// from the instrumented executable that loads the library, so the library
// may not insist on resolving every symbol itself.
let sanitizerBuild = Context.environment["MK_SANITIZER_BUILD"] != nil
let exportFlags: [String] = (staticRuntime ? ["-static-stdlib"] : []) + [
    "-Xlinker", "-soname=libmigrationkit.so.0",
    "-Xlinker", "--version-script=linker/migrationkit.map",
] + (sanitizerBuild ? [] : ["-Xlinker", "-z", "-Xlinker", "defs"])

let package = Package(
    name: "MigrationKit",
    products: [
        .library(name: "migrationkit", type: .dynamic, targets: ["MigrationKitExport"]),
    ],
    targets: [
        // C glue: checksums, variadic syscalls, the public header for Swift.
        .target(name: "CShim"),
        // Swift core: policy, engine, stream, C API exports.
        .target(name: "MigrationKit", dependencies: ["CShim"]),
        // Only carries the .so link flags, so they never reach test executables.
        .target(name: "MigrationKitExport", dependencies: ["MigrationKit"],
                linkerSettings: [.unsafeFlags(exportFlags)]),
        // Deterministic simulator: virtual clock, guest and link models.
        .target(name: "MigrationKitSim", dependencies: ["MigrationKit", "CShim"]),
        .testTarget(name: "MigrationKitTests", dependencies: ["MigrationKit", "MigrationKitSim", "CShim"]),
    ]
)
