import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.lang.instrument.ClassFileTransformer;
import java.lang.instrument.Instrumentation;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.security.ProtectionDomain;

/**
 * -javaagent:JAR: whichever class loader defines Beam's InetSocketAddressServerFactory (Flink's
 * child-first loader of a job's jars, a Spark executor's loader of an application's) gets
 * impax's copy of the class (ServerFactory.java), which binds loopback, not every interface.
 *
 * <p>The jar holds the copy and the sha256 of the class it replaces, Beam Java 2.62.0's: any
 * other class of that name (another Beam) is left as it is, with a line on stderr.
 */
public class LoopbackAgent {
  static final String TARGET =
      "org/apache/beam/sdk/fn/server/ServerFactory$InetSocketAddressServerFactory";

  public static void premain(String args, Instrumentation instrumentation) throws IOException {
    final byte[] copy = resource("loopback/InetSocketAddressServerFactory.class");
    final String replaces = new String(resource("loopback/replaces.sha256"), StandardCharsets.UTF_8).trim();
    instrumentation.addTransformer(new ClassFileTransformer() {
      @Override
      public byte[] transform(ClassLoader loader, String name, Class<?> redefined,
          ProtectionDomain domain, byte[] bytes) {
        if (!TARGET.equals(name)) {
          return null;
        }
        if (!replaces.equals(sha256(bytes))) {
          System.err.println("impax LoopbackAgent: " + name + " is not Beam Java 2.62.0's: left as it is"
              + " (its servers listen on every interface)");
          return null;
        }
        return copy;
      }
    });
  }

  static byte[] resource(String name) throws IOException {
    try (InputStream in = LoopbackAgent.class.getClassLoader().getResourceAsStream(name)) {
      if (in == null) {
        throw new IOException("the agent's jar has no " + name);
      }
      ByteArrayOutputStream out = new ByteArrayOutputStream();
      byte[] block = new byte[8192];
      for (int n; (n = in.read(block)) > 0; ) {
        out.write(block, 0, n);
      }
      return out.toByteArray();
    }
  }

  static String sha256(byte[] bytes) {
    try {
      StringBuilder hex = new StringBuilder();
      for (byte b : MessageDigest.getInstance("SHA-256").digest(bytes)) {
        hex.append(String.format("%02x", b));
      }
      return hex.toString();
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
  }
}
