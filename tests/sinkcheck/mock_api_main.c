/* A stand-alone `mock-api` binary for the sink check while src/cli/main.c is not built:
 * `mock_api_main mock-api --listen ...` runs exactly what `engage mock-api ...` runs. */
int eng_cmd_mock_api(int argc, char **argv);

int main(int argc, char **argv)
{
    return eng_cmd_mock_api(argc - 1, argv + 1);
}
