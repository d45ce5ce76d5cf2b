{
  "targets": [
    {
      "target_name": "sparse",
      "sources": ["src/sparse.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
