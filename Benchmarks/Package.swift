// swift-tools-version: 6.2
// ordo-one/benchmark cases for Meld. Kept in this nested package so that `swift test` at the
// top level does not build the benchmark framework. Run: cd Benchmarks && swift package benchmark
import PackageDescription

let package = Package(
    name: "MeldBenchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(path: "Meld"), // Meld -> .. (a fixed name: a path dependency is named after its folder)
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "MeldBenchmarks",
            dependencies: [
                .product(name: "Meld", package: "Meld"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "MeldBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
