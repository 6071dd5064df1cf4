@_exported import MigrationKit
